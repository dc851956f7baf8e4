"""Frontend pass: the model becomes an ``fx.GraphModule``.

Frontends are registered by name; ``fx`` (graphprune's torch.fx tracer, see
:mod:`graphprune.tracing`) is the default. A second frontend (``torch.export``
for models with Python control flow on tensors) plugs in with
:func:`register_frontend` and ``PruneConfig(frontend=...)``. The model is
copied and put in eval mode first: the caller's model is never touched. The
copy has its own modules and buffers but shares the parameter tensors with
the caller's model (see :func:`~graphprune.copying.private_copy`): no pass
writes into ``state.graph``'s parameters (the mask and rewrite passes work on
copies of their own).

The fx frontend also traces the model in training mode, where the eval-mode
trace read a ``training`` flag (see :func:`~graphprune.tracing.changes_in_training`).
Where that graph is another (an auxiliary head, a detector's training
outputs), it becomes ``state.train_graph`` and the channel analysis reads both.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable

import torch
import torch.fx as fx
import torch.nn as nn

from .. import tracing
from ..copying import private_copy
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
    free_shape_caches(model)
    try:
        gm = tracing.trace(model)
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
        gm.meta[tracing.CALLS_KEY] = tracing.calls_from_stacks(gm.graph)
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
        if state.frontend == "fx":
            state.train_graph = self.train_graph(model, state)
        model.eval()

    @staticmethod
    def train_graph(model: nn.Module, state: CompileState) -> fx.GraphModule | None:
        """The model traced in training mode, where its code differs from eval mode's."""
        if not tracing.changes_in_training(model, state.graph):
            return None  # no traced code read a training flag: training mode runs the same code
        model.train()
        try:
            train = tracing.trace(model, unless_same_as=state.graph.graph)
        except Exception as exc:
            state.notes.append(f"the model could not be traced in training mode ({first_line(exc)}): "
                               "only its eval-mode graph was analysed")
            return None
        if train is None or train.code == state.graph.code:
            return None
        train.meta[FRONTEND_KEY] = "fx"
        return train
