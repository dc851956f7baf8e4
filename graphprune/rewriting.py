"""What a rule's ``rewrite`` may ask about the compact graph: which
channels of a node's output the plan keeps, and where they land.

Shared by the rewrite pass, the op rules' ``rewrite`` methods and the verify
pass (which compares the masked model restricted to the kept channels with
the compact model, node by node).
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx

from . import ids
from .analysis import ChannelGraph
from .plan import PruningPlan
from .rules.base import TensorMeta, size_read, value

#: int arithmetic a size computed in forward may use (``c // g``, ``h * w``)
ARITHMETIC = {operator.floordiv, operator.mul, operator.add, operator.sub, operator.mod, operator.truediv,
              operator.neg, operator.pow, operator.getitem}


def sized_tensors(node: fx.Node) -> list[fx.Node]:
    """The tensors whose sizes feed ``node``'s arguments through size
    arithmetic (``b, c, h, w = x.size(); y.view(b, c // g, ...)``): pruning
    their channels changes those arguments even where ``node``'s own tensor
    inputs keep theirs."""
    found: list[fx.Node] = []
    seen: set[fx.Node] = set()

    def visit(arg: fx.Node) -> None:
        if arg in seen:
            return
        seen.add(arg)
        read = size_read(arg)
        if read is not None:
            found.append(read[0])
        elif arg.op == "call_function" and arg.target in ARITHMETIC:
            fx.node.map_arg((arg.args, arg.kwargs), visit)

    fx.node.map_arg((node.args, node.kwargs), visit)
    return found


class RewriteContext:
    """What a rule's ``rewrite`` may ask about the compact graph."""

    def __init__(self, gm: fx.GraphModule, plan: PruningPlan, graph: str = "eval"):
        self.gm = gm
        self.plan = plan
        self.analysis: ChannelGraph = plan.channels
        record = plan.channels.graphs[graph]
        #: the analysis' records of the graph being rewritten
        self.codes, self.depthwise = record.codes, record.depthwise
        self._values: dict[str, Any] = {}

    def compact_value(self, node: Any) -> Any:
        """What a size computed in forward (``c // g`` of ``b, c, h, w =
        x.size()``) evaluates to in the compact model, or None where it is
        not plain arithmetic on sizes."""
        if not isinstance(node, fx.Node):
            return node
        if node.name not in self._values:
            self._values[node.name] = self._evaluate(node)
        return self._values[node.name]

    def _evaluate(self, node: fx.Node) -> Any:
        read = size_read(node)
        if read is not None:
            shape = self.compact_shape(read[0])
            if shape is None:
                return None
            return torch.Size(shape) if read[1] is None else shape[read[1]]
        if node.op != "call_function" or node.target not in ARITHMETIC or node.kwargs:
            return None
        args = [self.compact_value(a) for a in node.args]
        if any(a is None for a in args):
            return None
        try:
            return node.target(*args)
        except Exception:
            return None

    def kept(self, code: torch.Tensor) -> torch.Tensor:
        return self.plan.class_kept[self.analysis.class_of[ids.raw_ids(code)]]

    def _along(self, code: torch.Tensor, dim: int) -> torch.Tensor:
        keep = self.kept(code)
        others = tuple(d for d in range(keep.ndim) if d != dim)
        return keep.any(dim=others) if others else keep

    def compact_size(self, code: torch.Tensor, shape: Any, dim: int) -> int:
        dim = dim % len(shape)
        if code.shape[dim] == 1:
            return int(shape[dim])
        return int(self._along(code, dim).sum())

    def compact_shape(self, node: fx.Node) -> list[int] | None:
        code, meta = self.codes.get(node.name), value(node)
        if not isinstance(code, torch.Tensor) or not isinstance(meta, TensorMeta):
            return None
        return [self.compact_size(code, meta.shape, d) for d in range(meta.ndim)]

    def kept_prefix(self, node: fx.Node, dim: int) -> torch.Tensor | None:
        """Kept positions before each index along ``dim`` of ``node``'s output
        (length size + 1), or None where nothing along ``dim`` is dropped."""
        code = self.codes.get(node.name)
        if not isinstance(code, torch.Tensor) or code.shape[dim % code.ndim] == 1:
            return None
        along = self._along(code, dim % code.ndim)
        if bool(along.all()):
            return None
        return torch.cat([torch.zeros(1, dtype=torch.int64), along.cumsum(0)])
