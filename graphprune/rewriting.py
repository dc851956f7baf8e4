"""What a rule's ``rewrite`` may ask about the compact graph: which
channels of a node's output the plan keeps, and where they land.

Shared by the rewrite pass, the op rules' ``rewrite`` methods and the verify
pass (which compares the masked model restricted to the kept channels with
the compact model, node by node).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from . import ids
from .analysis import ChannelGraph
from .plan import PruningPlan
from .rules.base import TensorMeta, value


class RewriteContext:
    """What a rule's ``rewrite`` may ask about the compact graph."""

    def __init__(self, gm: fx.GraphModule, plan: PruningPlan):
        self.gm = gm
        self.plan = plan
        self.analysis: ChannelGraph = plan.channels

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
        code, meta = self.analysis.codes.get(node.name), value(node)
        if not isinstance(code, torch.Tensor) or not isinstance(meta, TensorMeta):
            return None
        return [self.compact_size(code, meta.shape, d) for d in range(meta.ndim)]

    def kept_prefix(self, node: fx.Node, dim: int) -> torch.Tensor | None:
        """Kept positions before each index along ``dim`` of ``node``'s output
        (length size + 1), or None where nothing along ``dim`` is dropped."""
        code = self.analysis.codes.get(node.name)
        if not isinstance(code, torch.Tensor) or code.shape[dim % code.ndim] == 1:
            return None
        along = self._along(code, dim % code.ndim)
        return torch.cat([torch.zeros(1, dtype=torch.int64), along.cumsum(0)])
