"""Shape pass: run the traced graph once and record what every node produced.

``node.meta["graphprune.value"]`` holds a :class:`~graphprune.rules.TensorMeta`
(shape and dtype) for tensors, the same structure of them for tuples, and the
concrete value for everything else (the ints of ``x.size()``), which the
channel analysis needs to replay layout ops on id tensors.

Only shapes, dtypes and values computed from shapes are recorded, so where
every op of the graph has a shape that does not depend on the values it
reads (every op has one of graphprune's own rules, or only reads sizes), the
run skips the arithmetic of convolutions and linear layers: their outputs
are zeros of the right shape and dtype, found from the layer's attributes.
At the first op that might look at values (an op without a rule, indexing
with a tensor, ``.item()``) the run starts again for real, so the recorded
values are always those of a real run.

Example::

    gm = torch.fx.symbolic_trace(model)
    ShapePass().record(gm, (torch.randn(1, 3, 64, 64),))
    gm.graph.nodes[1].meta["graphprune.value"]  # TensorMeta(shape=..., dtype=...)
"""

from __future__ import annotations

import builtins
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_aggregate

from ..errors import ConfigError, first_line
from ..numerics import fresh_copy
from ..pipeline import CompileState
from ..rules import RULES
from ..rules.base import VALUE_KEY, TensorMeta


def describe_inputs(inputs: tuple) -> str:
    return ", ".join(
        f"{tuple(x.shape)} {str(x.dtype).replace('torch.', '')}" if isinstance(x, torch.Tensor) else repr(x)
        for x in inputs
    )


def dtype_hint(state: CompileState) -> str:
    """Where an input's dtype differs from the model's weights: which, and the fix."""
    weights = {p.dtype for p in state.model.parameters() if p.is_floating_point()}
    if len(weights) != 1:
        return ""
    (dtype,) = weights
    wrong = [i for i, x in enumerate(state.example_inputs) if isinstance(x, torch.Tensor) and x.dtype != dtype]
    if not wrong:
        return ""
    name = str(dtype).replace("torch.", "")
    return f" (the model's weights are {name}: convert input {wrong[0]} with x.to(torch.{name}))"


def check_input_count(gm: fx.GraphModule, inputs: tuple) -> None:
    """No more examples than inputs of ``forward``: the graph would ignore the
    extra ones here and the compiled models refuse them later. (Too few fail
    when the graph runs; an exported graph may take nested inputs flattened.)"""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) > len(placeholders):
        names = ", ".join(str(n.target).lstrip("*") for n in placeholders)
        count = f"{len(placeholders)} input{'s' if len(placeholders) != 1 else ''}"
        raise ConfigError(
            f"the model takes {count} ({names}); got {len(inputs)} example inputs. "
            "Pass one example tensor per input of forward, as a tuple."
        )


SIZE_METHODS = frozenset({"size", "dim", "numel", "nelement", "ndimension"})
SIZE_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim"})
SHAPE_ONLY_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _ValuesMatter(Exception):
    """An op of the graph may depend on the values of its tensor inputs."""


def _reads_only_sizes(n: fx.Node) -> bool:
    if n.op == "call_method":
        return n.target in SIZE_METHODS
    if n.op == "call_function":
        if n.target is builtins.getattr:
            return len(n.args) > 1 and n.args[1] in SIZE_ATTRIBUTES
        return "sym_size" in str(n.target) or n.target is torch.numel
    return False


def _shape_static(n: fx.Node, gm: fx.GraphModule, modules: dict, env: dict) -> bool:
    """Whether ``n``'s output shape is a function of its inputs' shapes alone:
    ops with one of graphprune's own rules (but not indexing with a tensor)
    and size queries. Anything else (a user's rule, an op without a rule)
    may look at values."""
    if _reads_only_sizes(n):
        return True
    rule = RULES.lookup(n, gm, modules)
    if rule is None or not type(rule).__module__.startswith("graphprune.rules"):
        return False
    if n.op == "call_function" and n.target is operator.getitem and len(n.args) > 1:
        return not any(isinstance(env.get(a), torch.Tensor) for a in _nodes(n.args[1]))
    return True


def _nodes(tree: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(tree, found.append)
    return found


def _output_shape(module: nn.Module, x: torch.Tensor) -> tuple[int, ...] | None:
    """Output shape of a plain conv or linear layer on ``x``, or None where
    only running it can tell (or raise the error a real run raises)."""
    weight = module.weight
    if x.dtype != weight.dtype or x.device != weight.device or not x.is_floating_point():
        return None
    if isinstance(module, nn.Linear):
        if x.ndim < 1 or x.shape[-1] != module.in_features:
            return None
        return (*x.shape[:-1], module.out_features)
    spatial = len(module.kernel_size)
    if x.ndim not in (spatial + 1, spatial + 2) or x.shape[-spatial - 1] != module.in_channels:
        return None
    size = x.shape[-spatial:]
    if module.padding == "same":
        out = tuple(size)
    else:
        padding = (0,) * spatial if module.padding == "valid" else module.padding
        out = tuple(
            (s + 2 * p - d * (k - 1) - 1) // st + 1
            for s, p, d, k, st in zip(size, padding, module.dilation, module.kernel_size, module.stride)
        )
    if len(out) != spatial or any(o <= 0 for o in out):
        return None
    return (*x.shape[: -spatial - 1], module.out_channels, *out)


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, shapes_only: bool = False):
        super().__init__(gm)
        self.shapes_only = shapes_only
        self.modules = dict(gm.named_modules(remove_duplicate=False)) if shapes_only else {}

    def run_node(self, n: fx.Node) -> Any:
        if self.shapes_only and n.op.startswith("call_"):
            reads_tensor = any(isinstance(self.env.get(a), torch.Tensor) for a in _nodes((n.args, n.kwargs)))
            if reads_tensor and not _shape_static(n, self.module, self.modules, self.env):
                raise _ValuesMatter(n.name)
        result = super().run_node(n)
        n.meta[VALUE_KEY] = map_aggregate(
            result, lambda v: TensorMeta(v.shape, v.dtype) if isinstance(v, torch.Tensor) else v
        )
        return result

    def call_module(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if self.shapes_only and not kwargs and len(args) == 1 and isinstance(args[0], torch.Tensor):
            module = self.modules.get(target)
            if type(module) in SHAPE_ONLY_LAYERS:
                shape = _output_shape(module, args[0])
                if shape is not None:
                    return torch.zeros(shape, dtype=args[0].dtype, device=args[0].device)
        return super().call_module(target, args, kwargs)


class ShapePass:
    name = "shapes"
    requires = ("graph",)
    provides: tuple[str, ...] = ()

    def record(self, gm: fx.GraphModule, example_inputs: tuple) -> None:
        with torch.no_grad():
            try:
                _Recorder(gm, shapes_only=True).run(*fresh_copy(example_inputs))
                return
            except Exception:  # values matter, or an error: a real run says which
                pass
            _Recorder(gm).run(*fresh_copy(example_inputs))

    def __call__(self, state: CompileState) -> None:
        check_input_count(state.graph, state.example_inputs)
        try:
            self.record(state.graph, state.example_inputs)
        except Exception as exc:
            first = first_line(exc)
            raise ConfigError(
                f"the example inputs ({describe_inputs(state.example_inputs)}) do not fit the model: "
                f"{first}. Pass inputs of the shape and dtype the model expects{dtype_hint(state)}."
            ) from exc
        if state.train_graph is not None:
            # Its layers run as in eval mode here (they are the eval graph's), but code
            # traced in training mode updates statistics itself (timm's norm layers call
            # F.batch_norm with training=True): the buffers are put back afterwards.
            buffers = [(b, b.clone()) for b in state.train_graph.buffers()]
            try:
                self.record(state.train_graph, state.example_inputs)
            except Exception as exc:
                state.notes.append(f"the training-mode graph does not run on the example inputs "
                                   f"({first_line(exc)}): only the eval-mode graph was analysed")
                state.train_graph = None
            finally:
                with torch.no_grad():
                    for buffer, saved in buffers:
                        buffer.copy_(saved)
