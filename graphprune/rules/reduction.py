"""Reductions (mean, sum, var, norm, amax, ...) and softmax along a dim.

Along dims where channel ids do not vary (spatial global pooling written as
``x.mean((2, 3))``) they are per-channel. Across channels (``x.mean(1,
keepdim=True)``, ``x.pow(2).mean(-1)``, a global response norm's mean of
channel norms) a sum, a p-norm, a mean and a variance are exact after pruning
when every dropped channel is zero in the masked model: a zero adds nothing to
a sum or a norm, and a mean or a variance counts the dropped zeros when the
compact model divides by the original count (:mod:`graphprune.norms`). The
result has no channels (it broadcasts over them). Any other reduction across
channels (amax, logsumexp, softmax), or one over channels that are not zero
when dropped, mixes them: those channels are pinned.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .. import ids
from ..norms import counted_mean, counted_var
from .base import TensorMeta, argument, describe, opaque, tensor_args, value
from .pointwise import maps_zero_to_zero
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext
    from ..rewriting import RewriteContext


def _dims(node: fx.Node, ndim: int, position: int) -> list[int]:
    dims = argument(node, position, "dim", None)
    if dims is None:
        return list(range(ndim))
    return sorted({d % ndim for d in ([dims] if isinstance(dims, int) else dims)})


class ReductionRule:
    name = "reduction"
    #: where ``dim`` and ``keepdim`` are in the op's arguments
    DIM, KEEPDIM = 1, 2
    def across_channels(self, node: fx.Node) -> bool:
        """Exact across channels whose dropped values are zero (with a rewrite where it counts)."""
        return False

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        if tensor_args(node) != [node.args[0]] or not isinstance(value(node), TensorMeta):
            return None
        code = ctx.code(node.args[0])
        dims = _dims(node, code.ndim, self.DIM)
        across = set(dims) & set(ids.varying_dims(code))
        if across:
            reason = f"reduced across channels by {describe(node)} (node {node.name})"
            if self.across_channels(node) and set(ids.varying_dims(code)) <= set(dims):
                nonzero = ~ids.zero_bits(code)
                if bool(nonzero.any()):  # a value that is not zero when dropped would change the result
                    ctx.pin(ids.raw_ids(code)[nonzero], f"{reason}, not zero when dropped")
            else:
                ctx.pin_code(code, reason)
            return opaque(node, ctx, reason)  # no channels left: one pinned id
        if not argument(node, self.KEEPDIM, "keepdim", False):
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


class SumRule(ReductionRule):
    """sum and p-norms: a dropped zero adds nothing, so the compact op is the same op."""

    def across_channels(self, node: fx.Node) -> bool:
        return True


class NormRule(SumRule):
    """``torch.norm(x, p, dim, keepdim)``, ``torch.linalg.vector_norm(x, ord,
    dim, keepdim)``: a dropped zero changes a p-norm only for p < 0 (and p =
    -inf, the smallest magnitude), which is pinned across channels."""

    DIM, KEEPDIM = 2, 3

    def across_channels(self, node: fx.Node) -> bool:
        p = argument(node, 1, "ord" if "vector_norm" in str(node.target) else "p", 2)
        return p in ("fro", None) or (isinstance(p, (int, float)) and p >= 0)


class MeanRule(ReductionRule):
    """mean: in the compact model the sum over the kept entries divided by the original count."""

    def across_channels(self, node: fx.Node) -> bool:
        # only (x, dim, keepdim): an option the counted form does not take (dtype=) keeps the channels
        return len(node.args) <= 3 and not set(node.kwargs) - {"dim", "keepdim"}

    def total(self, node: fx.Node, rw: RewriteContext) -> int | None:
        """The original count of reduced entries where channels were dropped along them, else None."""
        x = node.args[0]
        dims = _dims(node, value(x).ndim, self.DIM)
        if all(rw.kept_prefix(x, d) is None for d in dims):
            return None
        return math.prod(value(x).shape[d] for d in dims)

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        total = self.total(node, rw)
        if total is not None:
            node.op, node.target = "call_function", counted_mean
            node.args = (node.args[0], argument(node, 1, "dim"), argument(node, 2, "keepdim", False), total)
            node.kwargs = {}


class VarianceRule(MeanRule):
    """var and std with ``correction`` (or ``unbiased``) as a keyword: the
    dropped zeros' share added back (:func:`graphprune.norms.counted_var`)."""

    def across_channels(self, node: fx.Node) -> bool:
        # var(x, dim, unbiased, keepdim) positionally is not parsed: across channels it keeps them
        return len(node.args) <= 2 and not set(node.kwargs) - {"dim", "keepdim", "correction", "unbiased"}

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        total = self.total(node, rw)
        if total is None:
            return
        unbiased = node.kwargs.get("unbiased")
        correction = node.kwargs.get("correction", 1 if unbiased is None else int(unbiased))
        sqrt = getattr(node.target, "__name__", node.target) == "std"
        node.op, node.target = "call_function", counted_var
        node.args = (node.args[0], argument(node, 1, "dim"), correction, node.kwargs.get("keepdim", False), total,
                     sqrt)
        node.kwargs = {}


register_rule(torch.amax, torch.amin, torch.logsumexp, "amax", "amin", "logsumexp")(ReductionRule)
register_rule(torch.sum, "sum")(SumRule)
register_rule(torch.norm, torch.linalg.vector_norm, "norm")(NormRule)
register_rule(torch.mean, "mean")(MeanRule)
register_rule(torch.var, torch.std, "var", "std")(VarianceRule)
register_rule(torch.softmax, F.softmax, F.log_softmax, torch.log_softmax, "softmax", "log_softmax",
              nn.Softmax, nn.LogSoftmax)(SoftmaxRule)
