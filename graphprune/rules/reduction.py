"""Reductions (mean, sum, amax, ...) and softmax along a dim.

Along dims where channel ids do not vary (spatial global pooling written as
``x.mean((2, 3))``) they are per-channel. Along a dim where ids vary they mix
channels, so those channels are pinned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .. import ids
from .base import TensorMeta, argument, describe, opaque, tensor_args, value
from .pointwise import maps_zero_to_zero
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext


class ReductionRule:
    name = "reduction"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        if tensor_args(node) != [node.args[0]] or not isinstance(value(node), TensorMeta):
            return None
        code = ctx.code(node.args[0])
        ndim = code.ndim
        dims = argument(node, 1, "dim", None)
        if dims is None:
            dims = list(range(ndim))
        elif isinstance(dims, int):
            dims = [dims]
        dims = sorted({d % ndim for d in dims})
        if set(dims) & set(ids.varying_dims(code)):
            ctx.pin_code(code, f"reduced across channels by {describe(node)} (node {node.name})")
            return opaque(node, ctx, f"reduced across channels by {describe(node)} (node {node.name})")
        if not argument(node, 2, "keepdim", False):
            code = code.reshape([s for d, s in enumerate(code.shape) if d not in dims])
        if code.ndim != value(node).ndim:
            return None
        return code if maps_zero_to_zero(node, ctx) else ids.with_zero(code, False)


class SoftmaxRule:
    """softmax over a dim: per-channel unless the channels vary along it;
    never zero-preserving (softmax of zeros is uniform)."""

    name = "softmax"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        x = node.args[0]
        code = ctx.code(x)
        if node.op == "call_module":
            dim = ctx.module(node.target).dim
        else:
            dim = argument(node, 1, "dim", None)
        if dim is None or (dim % code.ndim) in ids.varying_dims(code):
            ctx.pin_code(code, f"normalised across channels by {describe(node)} (node {node.name})")
        return ids.with_zero(code, False)


register_rule(
    torch.mean, torch.sum, torch.amax, torch.amin, torch.std, torch.var, torch.logsumexp,
    "mean", "sum", "amax", "amin", "std", "var", "logsumexp",
)(ReductionRule)
register_rule(torch.softmax, F.softmax, F.log_softmax, torch.log_softmax, "softmax", "log_softmax",
              nn.Softmax, nn.LogSoftmax)(SoftmaxRule)
