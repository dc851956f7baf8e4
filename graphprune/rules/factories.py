"""Ops that make a new tensor from another one's shape, dtype and device only:
``x.new_empty(shape)``, ``torch.zeros_like(x)``, ``torch.rand_like(x)``, ...

They read no values of their input, so its channels are free; their output
is a new tensor whose channels nothing can be said about (fresh ids, pinned
where they meet real channels). timm's DropPath draws its per-sample mask so:
``x.new_empty((n, 1, 1, 1)).bernoulli_(keep)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from .base import describe, opaque
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext


class FactoryRule:
    name = "factory"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        return opaque(node, ctx, f"made by {describe(node)} (node {node.name}) from a shape alone")


register_rule(
    "new_empty", "new_zeros", "new_ones", "new_full",
    torch.empty_like, torch.zeros_like, torch.ones_like, torch.full_like, torch.rand_like, torch.randn_like,
)(FactoryRule)
