"""Shape pass: run the traced graph once and record what every node produced.

``node.meta["graphprune.value"]`` holds a :class:`~graphprune.rules.TensorMeta`
(shape and dtype) for tensors, the same structure of them for tuples, and the
concrete value for everything else (the ints of ``x.size()``), which the
channel analysis needs to replay layout ops on id tensors.

Example::

    gm = torch.fx.symbolic_trace(model)
    ShapePass().record(gm, (torch.randn(1, 3, 64, 64),))
    gm.graph.nodes[1].meta["graphprune.value"]  # TensorMeta(shape=..., dtype=...)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch.fx.node import map_aggregate

from ..errors import ConfigError
from ..pipeline import CompileState
from ..rules.base import VALUE_KEY, TensorMeta
from ..tensors import fresh_copy


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


class _Recorder(fx.Interpreter):
    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta[VALUE_KEY] = map_aggregate(
            result, lambda v: TensorMeta(v.shape, v.dtype) if isinstance(v, torch.Tensor) else v
        )
        return result


class ShapePass:
    name = "shapes"
    requires = ("graph",)
    provides: tuple[str, ...] = ()

    def record(self, gm: fx.GraphModule, example_inputs: tuple) -> Any:
        with torch.no_grad():
            return _Recorder(gm).run(*fresh_copy(example_inputs))

    def __call__(self, state: CompileState) -> None:
        check_input_count(state.graph, state.example_inputs)
        try:
            self.record(state.graph, state.example_inputs)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(
                f"the example inputs ({describe_inputs(state.example_inputs)}) do not fit the model: "
                f"{first}. Pass inputs of the shape and dtype the model expects{dtype_hint(state)}."
            ) from exc
