"""Frontend pass: the model becomes an ``fx.GraphModule``.

Frontends are registered by name; ``fx`` (``torch.fx.symbolic_trace``) is the
default. A second frontend (``torch.export`` for models with Python control
flow on tensors) plugs in with :func:`register_frontend` and
``PruneConfig(frontend=...)``. The model is copied and put in eval mode
first: the caller's model is never touched. The copy has its own modules and
buffers but shares the parameter tensors with the caller's model (see
:func:`private_copy`): no pass writes into ``state.graph``'s parameters (the
mask and rewrite passes work on copies of their own), and copying every weight
would cost the whole model's size in memory and a large part of the compile time.
"""

from __future__ import annotations

import copy
import os
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..errors import ConfigError, TraceError, first_line
from ..pipeline import CompileState

FRONTEND_KEY = "graphprune.frontend"  # gm.meta: which frontend made the graph
NOTES_KEY = "graphprune.notes"  # gm.meta: what the frontend wants the user to know
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


FX_ADVICE = "wrap that code in a leaf module"


@register_frontend("fx")
def fx_frontend(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    try:
        gm = fx.symbolic_trace(model)
        gm.meta[FRONTEND_KEY] = "fx"
        return gm
    except Exception as exc:
        raise TraceError(
            f"torch.fx cannot trace {type(model).__name__}{_user_frame(exc)}: {first_line(exc)}. "
            "Python control flow or calls that depend on tensor values cannot be traced "
            f"symbolically; {FX_ADVICE} or use the export frontend (frontend='export')."
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


def free_shape_caches(model: nn.Module) -> None:
    """Heads that cache state per input shape (ultralytics' Detect keeps anchors
    for the last shape it saw) make torch.export guard the batch size. Such a
    head has a ``dynamic`` switch that recomputes instead; turn it on in
    graphprune's private copy of the model."""
    for module in model.modules():
        if isinstance(getattr(module, "dynamic", None), bool) and hasattr(module, "anchors") and hasattr(module, "shape"):
            module.dynamic = True
            module.shape = None


@register_frontend("export")
def export_frontend(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """``torch.export`` (non-strict): an fx graph of ATen ops, for models with
    Python control flow that symbolic tracing cannot follow. The batch dim is
    exported dynamic where the model allows it, so the compact model keeps a
    free batch size."""
    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    free_shape_caches(model)
    try:
        program = None
        if len(tensors) == len(example_inputs) and all(x.ndim > 0 for x in tensors):
            # A batch of 1 would be specialised; 2 may be a size the model has cached.
            for copies in (2, 3):
                try:
                    batch = torch.export.Dim("batch", min=1)
                    widened = tuple(torch.cat([x] * copies) for x in example_inputs)
                    program = torch.export.export(
                        model, widened, dynamic_shapes=tuple({0: batch} for _ in widened), strict=False
                    )
                    break
                except Exception:
                    continue
        static = program is None
        if static:  # the model fixes its batch size: export it static
            program = torch.export.export(model, tuple(example_inputs), strict=False)
        gm = plain_graph_module(program.module())
        gm.meta[FRONTEND_KEY] = "export"
        if static:
            gm.meta[NOTES_KEY] = [
                "torch.export could not keep the batch dim dynamic: the compact model takes "
                f"batch {tensors[0].shape[0] if tensors else 'as given'} only"
            ]
        return gm
    except Exception as exc:
        raise TraceError(
            f"torch.export cannot export {type(model).__name__}{_user_frame(exc)}: {first_line(exc)}"
        ) from exc


@register_frontend("auto")
def auto_frontend(model: nn.Module, example_inputs: tuple) -> fx.GraphModule:
    """torch.fx first (module-level graphs); torch.export where fx fails."""
    try:
        return fx_frontend(model, example_inputs)
    except TraceError as fx_error:
        try:
            return export_frontend(model, example_inputs)
        except TraceError as export_error:
            fx_part = str(fx_error).replace(" or use the export frontend (frontend='export').", ".")
            raise TraceError(
                f"{fx_part} The torch.export frontend, tried next, failed too: {export_error} "
                f"To compile it, {FX_ADVICE} or make the code exportable (torch.export's "
                "'draft_export' tells what blocks it)."
            ) from export_error


def private_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose modules, attributes and buffers are its own,
    but whose parameters are the caller's tensors.

    Modules, their training flags and every other attribute are copied, so
    ``eval()``, a frontend that switches a head to dynamic shapes, or a
    forward that updates a buffer leave the caller's model alone. Parameter
    tensors are shared (tied parameters stay tied): graphprune reads them and
    never writes them (masking and slicing happen in copies)."""
    memo: dict[int, Any] = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}

    def clone(module: nn.Module) -> nn.Module:
        # copy.deepcopy of every module object is slow (most of a small
        # model's compile); plain attributes and empty hook tables need none.
        if id(module) in memo:
            return memo[id(module)]
        new = object.__new__(type(module))
        memo[id(module)] = new
        state = new.__dict__
        for key, value in module.__dict__.items():
            if key == "_modules":
                state[key] = {k: None if m is None else clone(m) for k, m in value.items()}
            elif key == "_parameters":
                state[key] = dict(value)
            elif _immutable(value):
                state[key] = value
            elif isinstance(value, dict) and not value:
                state[key] = type(value)()
            elif isinstance(value, nn.Module):
                state[key] = clone(value)
            else:
                state[key] = copy.deepcopy(value, memo)
        return new

    return clone(model)


IMMUTABLE = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size, type)


def _immutable(value: Any) -> bool:
    return isinstance(value, IMMUTABLE) or (type(value) is tuple and all(_immutable(v) for v in value))


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
        model = private_copy(state.model)
        if state.model.training:
            state.notes.append("the model was in training mode; it was compiled in eval mode")
        model.eval()
        state.graph = frontend(model, state.example_inputs)
        state.graph.eval()
        state.frontend = state.graph.meta.get(FRONTEND_KEY, state.config.frontend)
        state.notes.extend(state.graph.meta.get(NOTES_KEY, []))
