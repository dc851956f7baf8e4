"""Contractions: matrix products and scaled dot-product attention.

``a @ b`` sums ``a[..., n, i] * b[..., i, m]`` over ``i``. Where ``i`` carries
channels (the head dim of ``q @ k.transpose(-2, -1)``), index ``i`` of both
operands is one channel: dropping it removes the term ``a_i * b_i``, which
the masked model computes as zero when either factor is a dropped zero. The
result holds no channels (it is summed over them). Where the channels are on
a free dim (``attn @ v``: the rows of ``v``'s last dim), the product keeps
them: column ``m`` of the result is zero when column ``m`` of ``b`` is.
Where the channels vary along batch dims only (whole heads: head ``h`` of
``q @ k^T`` and of ``attn @ v``), each batch index is its own product:
head ``h`` of both operands is one channel, and of the result, which is zero
where either factor's head is. A contraction whose channels vary on batch
and matrix dims at once, on both dims of one operand, or on one side of the
contracted dim only, is not understood: the unknown rule pins it.

``F.scaled_dot_product_attention(q, k, v)`` is the two of them,
``softmax(q @ k^T * scale) @ v``: q's and k's head dims are one channel each,
v's head dim is the output's. Its default scale, ``1/sqrt(E)``, is computed
from q's size: pruning E would change it, so the rewrite writes the
original scale as a literal (the masked model keeps E, its dropped entries
zero). The layout rules keep every head's dims at the same positions (a
reshape into heads couples them), so every head keeps the same count.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from .. import ids
from .base import TensorMeta, argument, describe, opaque, value
from .elementwise import original_scalar
from .layout import LayoutRule
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext
    from ..rewriting import RewriteContext


def varying(code: torch.Tensor) -> set[int]:
    """The dims a code varies along, counted from the end (-1 the last)."""
    return {d - code.ndim for d in ids.varying_dims(code)}


def contract(ctx: AnalysisContext, node: fx.Node, left: torch.Tensor, right: torch.Tensor) -> None:
    """Index i of ``left`` and of ``right`` (the codes along the contracted
    dim) is one channel; it may be dropped only where one factor is zero."""
    left, right = torch.broadcast_tensors(left.reshape(-1), right.reshape(-1))
    ctx.unify(ids.raw_ids(left), ids.raw_ids(right))
    neither = ~(ids.zero_bits(left) | ids.zero_bits(right))
    if bool(neither.any()):
        reason = (f"contracted by {describe(node)} (node {node.name}) where neither factor is zero when dropped")
        ctx.pin(ids.raw_ids(left[neither]), reason)


def leading(code: torch.Tensor, ndim: int) -> torch.Tensor:
    return code.reshape((1,) * (ndim - code.ndim) + tuple(code.shape))


def batch_only(codes: list[torch.Tensor]) -> bool:
    """Whether channels vary somewhere, and only along batch dims (before the last two)."""
    dims = [varying(c) for c in codes]
    return any(dims) and all(d < -2 for v in dims for d in v)


def per_batch_index(ctx: AnalysisContext, node: fx.Node, operands: list[fx.Node], zero_from: list[int]) -> Any:
    """The output code of a product taken per batch index (whole heads): the
    operands' batch-dim ids are one channel each, and the output's is zero
    where an operand in ``zero_from`` is zero. An operand without channels
    must broadcast over the batch dims (size 1 there), else the compact model
    would pair its heads with the wrong ones: None (the unknown rule pins)."""
    out = value(node)
    codes = [leading(ctx.code(t), out.ndim) for t in operands]
    channel_dims = set().union(*(varying(c) for c in codes))
    for t, code in zip(operands, codes):
        shape = (1,) * (out.ndim - value(t).ndim) + tuple(value(t).shape)
        if not varying(code) and any(shape[d] != 1 for d in channel_dims):
            return None
    heads = [c.narrow(-1, 0, 1).narrow(-2, 0, 1) for c in codes]
    try:
        heads = list(torch.broadcast_tensors(*heads))
    except RuntimeError:
        return None
    varied = [h for h, c in zip(heads, codes) if varying(c)]
    for other in varied[1:]:
        ctx.unify(ids.raw_ids(varied[0]).reshape(-1), ids.raw_ids(other).reshape(-1))
    zero = torch.zeros(heads[0].shape, dtype=torch.bool)
    for i in zero_from:
        zero = zero | ids.zero_bits(heads[i])
    return ids.encode(ids.raw_ids(varied[0]), zero)


class MatmulRule:
    """``a @ b``, ``torch.matmul``, ``torch.bmm`` (see the module docstring)."""

    name = "matmul"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        a, b = node.args[0], node.args[1]
        out = value(node)
        if not isinstance(out, TensorMeta) or not all(
                isinstance(value(t), TensorMeta) and value(t).ndim >= 2 for t in (a, b)):
            return None
        ca, cb = ctx.code(a), ctx.code(b)
        va, vb = varying(ca), varying(cb)
        if batch_only([ca, cb]):
            return per_batch_index(ctx, node, [a, b], zero_from=[0, 1])
        if va == {-1} and vb == {-2}:
            contract(ctx, node, ca, cb)
            return opaque(node, ctx, f"summed over its channels by {describe(node)} (node {node.name})")
        if va <= {-2} and vb <= {-1} and not (va and vb):
            # The factor without channels, one value for every channel of the other, cannot follow
            # them (as in a broadcast product); with channels on neither, both are pinned.
            reason = f"multiplied into every channel by {describe(node)} (node {node.name})"
            for code, channels in ((ca, va), (cb, vb)):
                if not channels:
                    ctx.pin_code(code, reason)
            if not (va or vb):
                return opaque(node, ctx, f"produced by {describe(node)} (node {node.name}) from pinned factors")
            return leading(ca if va else cb, out.ndim)
        return None


class ScaledDotProductAttentionRule:
    """``F.scaled_dot_product_attention`` (see the module docstring)."""

    name = "scaled_dot_product_attention"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        q, k, v = node.args[:3]
        out, mask = value(node), argument(node, 3, "attn_mask")
        if not isinstance(out, TensorMeta) or not all(isinstance(value(t), TensorMeta) for t in (q, k, v)):
            return None
        cq, ck, cv = ctx.code(q), ctx.code(k), ctx.code(v)
        mask_code = ctx.code(mask) if isinstance(mask, fx.Node) else None
        if isinstance(mask_code, torch.Tensor) and varying(mask_code):
            return None  # a mask with channels
        if batch_only([cq, ck, cv]):  # whole heads; a mask must then be the same for every head
            meta = value(mask) if isinstance(mask, fx.Node) else None
            if isinstance(meta, TensorMeta) and meta.ndim >= 3 and meta.shape[-3] != 1:
                return None
            return per_batch_index(ctx, node, [q, k, v], zero_from=[2])
        if not (varying(cq) == varying(ck) and varying(cq) <= {-1} and varying(cv) <= {-1}):
            return None
        if varying(cq):
            contract(ctx, node, cq, ck)
        else:
            ctx.pin_code(cq, f"read by {describe(node)} (node {node.name}) without channels")
            ctx.pin_code(ck, f"read by {describe(node)} (node {node.name}) without channels")
        if not varying(cv):
            ctx.pin_code(cv, f"read by {describe(node)} (node {node.name}) without channels")
            return opaque(node, ctx, f"produced by {describe(node)} (node {node.name}) from pinned values")
        return leading(cv, out.ndim)

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        q, scale = node.args[0], argument(node, 6, "scale")
        if scale is None and rw.kept_prefix(q, -1) is not None:
            # The scale of the original head dim, which the compact q no longer has.
            node.kwargs = {**node.kwargs, "scale": 1.0 / math.sqrt(value(q).shape[-1])}
        elif isinstance(scale, fx.Node) and "scale" in node.kwargs:  # computed from a channel count, maybe
            node.kwargs = {**node.kwargs, "scale": original_scalar(scale, rw)}


class UnbindRule(LayoutRule):
    """``unbind(dim)``: a layout op, unless channels vary along ``dim`` (the
    number of outputs would change): then the unknown rule pins them."""

    name = "unbind"

    def dim(self, node: fx.Node) -> Any:
        return argument(node, 1, "dim", 0)

    def materialized_dims(self, node: fx.Node, ctx: AnalysisContext) -> set[int] | None:
        code, dim = ctx.code(node.args[0]), self.dim(node)
        return {dim % code.ndim} if isinstance(code, torch.Tensor) and isinstance(dim, int) else None

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        code, dim = ctx.code(node.args[0]), self.dim(node)
        if not isinstance(code, torch.Tensor) or not isinstance(dim, int) or code.shape[dim % code.ndim] > 1:
            return None
        return super().analyze(node, ctx)


register_rule(operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm")(MatmulRule)
register_rule(F.scaled_dot_product_attention)(ScaledDotProductAttentionRule)
register_rule(torch.unbind, "unbind")(UnbindRule)
