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

FRONTEND_KEY = "graphprune.frontend"  # gm.meta: which frontend made the graph
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
        gm = fx.symbolic_trace(model)
        gm.meta[FRONTEND_KEY] = "fx"
        return gm
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}{_user_frame(exc)}: {first_line}. "
            "Python control flow or calls that depend on tensor values cannot be traced "
            "symbolically; wrap that code in a leaf module or use the export frontend (frontend='export')."
        ) from exc


def plain_graph_module(exported: fx.GraphModule) -> fx.GraphModule:
    """An ordinary GraphModule from ``ExportedProgram.module()``: input-shape
    guards removed (the compact model has the same inputs) and ``eval()``
    allowed again, so the rest of the compiler treats both frontends alike."""
    graph = exported.graph
    for node in list(graph.nodes):
        if node.op == "call_module" and not isinstance(getattr(exported, str(node.target), None), nn.Module):
            if node.users:
                raise TraceError(f"the exported graph calls {node.target!r}, which is not a module")
            graph.erase_node(node)
    gm = fx.GraphModule(exported, graph)
    gm.graph.lint()
    return gm


@register_frontend("export")
def export_frontend(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """``torch.export`` (non-strict): an fx graph of ATen ops, for models with
    Python control flow that symbolic tracing cannot follow. The batch dim is
    exported dynamic where the model allows it, so the compact model keeps a
    free batch size."""
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    try:
        if len(tensors) == len(example_inputs) and all(x.ndim > 0 for x in tensors):
            try:
                batch = torch.export.Dim("batch", min=1)
                doubled = tuple(torch.cat([x, x]) for x in example_inputs)  # 1 would be specialised
                program = torch.export.export(
                    model, doubled, dynamic_shapes=tuple({0: batch} for _ in doubled), strict=False
                )
            except Exception:  # the model fixes its batch size: export it static
                program = torch.export.export(model, tuple(example_inputs), strict=False)
        else:
            program = torch.export.export(model, tuple(example_inputs), strict=False)
        gm = plain_graph_module(program.module())
        gm.meta[FRONTEND_KEY] = "export"
        return gm
    except Exception as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(f"torch.export cannot export {type(model).__name__}{_user_frame(exc)}: {first_line}") from exc


@register_frontend("auto")
def auto_frontend(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """torch.fx first (module-level graphs); torch.export where fx fails."""
    try:
        return fx_frontend(model, example_inputs)
    except TraceError as fx_error:
        try:
            return export_frontend(model, example_inputs)
        except TraceError as export_error:
            raise TraceError(f"{fx_error} The torch.export frontend failed too: {export_error}") from export_error


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
        state.frontend = state.graph.meta.get(FRONTEND_KEY, state.config.frontend)
