"""Frontend pass: the model becomes an ``fx.GraphModule``.

Frontends are registered by name; ``fx`` (``torch.fx.symbolic_trace``) is the
default. A second frontend (``torch.export`` for models with Python control
flow on tensors) plugs in with :func:`register_frontend` and
``PruneConfig(frontend=...)``. The model is deep-copied and put in eval mode
first: the caller's model is never touched.
"""

from __future__ import annotations

import copy
import os
import traceback
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import ConfigError, TraceError
from ..pipeline import CompileState

Frontend = Callable[[nn.Module, tuple], fx.GraphModule]
FRONTENDS: dict[str, Frontend] = {}


def register_frontend(name: str) -> Callable[[Frontend], Frontend]:
    def wrap(fn: Frontend) -> Frontend:
        FRONTENDS[name] = fn
        return fn

    return wrap


def _user_frame(exc: BaseException) -> str:
    """Where in the user's code (not torch's) tracing failed."""
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(torch_dir)]
    if not frames:
        return ""
    f = frames[-1]
    line = f" `{f.line.strip()}`" if f.line else ""
    return f" at {os.path.basename(f.filename)}:{f.lineno} in {f.name}:{line}"


@register_frontend("fx")
def fx_frontend(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}{_user_frame(exc)}: {first_line}. "
            "Python control flow or calls that depend on tensor values cannot be traced "
            "symbolically; wrap that code in a leaf module or use another frontend."
        ) from exc


class TracePass:
    name = "trace"
    requires: tuple[str, ...] = ()
    provides = ("graph", "frontend")

    def __call__(self, state: CompileState) -> None:
        frontend = FRONTENDS.get(state.config.frontend)
        if frontend is None:
            raise ConfigError(
                f"unknown frontend {state.config.frontend!r}; registered: {', '.join(sorted(FRONTENDS))}"
            )
        model = copy.deepcopy(state.model)
        if state.model.training:
            state.notes.append("the model was in training mode; it was compiled in eval mode")
        model.eval()
        state.graph = frontend(model, state.example_inputs)
        state.graph.eval()
        state.frontend = state.config.frontend
