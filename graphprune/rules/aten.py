"""Rules for the ATen ops that the ``torch.export`` frontend produces.

An exported graph calls ``aten.conv2d(x, weight, bias, ...)`` with parameters
read by ``get_attr`` nodes, where a traced graph calls ``nn.Conv2d`` modules.
The channel logic is the same: these rules only read the op's arguments and
hand them to the shared functions of the torch-level rules
(:func:`~graphprune.rules.creating.conv_channels`, ...), or register ATen
overloads to the very same rule classes where arguments line up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn.functional as F

from .. import ids
from ..tensors import get_tensor, owner_of
from .base import TensorMeta, argument, describe, opaque, tensor_args, value
from .contraction import MatmulRule, ScaledDotProductAttentionRule, UnbindRule
from .creating import ConvCall, conv_channels, linear_channels
from .elementwise import ElementwiseRule, PowerRule, ProductRule, QuotientRule
from .joining import ConcatRule, StackRule
from .layout import DimMovingRule, LayoutRule, ShapeArgsRule, SplitRule
from .normalization import ChannelMixingNormRule, GroupNormRule, LayerNormRule, batch_norm_channels
from .pointwise import PadRule, PointwiseRule, SpatialRule
from .reduction import MeanRule, ReductionRule, SoftmaxRule, SumRule
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext
    from ..rewriting import RewriteContext

aten = torch.ops.aten


def ops(*names: str) -> list[Any]:
    """The ATen overloads among ``names`` ("conv2d.default") this torch has."""
    found = []
    for name in names:
        packet, _, overload = name.partition(".")
        op = getattr(getattr(aten, packet, None), overload or "default", None)
        if op is not None:
            found.append(op)
    return found


def set_argument(node: fx.Node, position: int, name: str, new: Any) -> None:
    if len(node.args) > position:
        args = list(node.args)
        args[position] = new
        node.args = tuple(args)
    else:
        node.kwargs = {**node.kwargs, name: new}


def attribute(arg: Any) -> str | None:
    """The qualified name a ``get_attr`` argument reads, else None."""
    if isinstance(arg, fx.Node) and arg.op == "get_attr":
        return str(arg.target)
    return None


class AtenConvRule:
    """A conv called as a function on parameters read in forward:
    aten.conv1d/2d/3d, aten.convolution, aten.conv_transpose* (an exported
    graph) and F.conv1d/2d/3d, F.conv_transpose* (timm's ``Conv2dSame``, a
    user's own layer)."""

    name = "conv"
    #: op -> (groups position, transposed position or a constant)
    layouts: dict[Any, tuple[int, Any]] = {}

    def parameters(self, node: fx.Node) -> list[Any]:
        return [node.args[1], argument(node, 2, "bias")]

    def _groups_position(self, node: fx.Node) -> tuple[int, bool]:
        groups_at, transposed = self.layouts[node.target]
        if isinstance(transposed, int) and not isinstance(transposed, bool):
            transposed = bool(argument(node, transposed, "transposed", False))
        return groups_at, transposed

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        x, w, b = node.args[0], node.args[1], argument(node, 2, "bias")
        weight, bias = attribute(w), attribute(b)
        if not isinstance(value(x), TensorMeta):
            return None
        if weight is None or (b is not None and bias is None):
            return computed_weight(node, ctx)
        groups_at, transposed = self._groups_position(node)
        groups = argument(node, groups_at, "groups", 1)
        shape = value(w).shape
        out_ch = shape[1] * groups if transposed else shape[0]
        conv = ConvCall(owner_of(weight), x, weight, bias, value(x).shape[1], out_ch, groups, transposed)
        return conv_channels(node, ctx, conv)

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        if node.name in rw.depthwise:
            groups_at, _ = self._groups_position(node)
            set_argument(node, groups_at, "groups", get_tensor(rw.gm, attribute(node.args[1])).shape[0])


def computed_weight(node: fx.Node, ctx: AnalysisContext) -> Any:
    """A layer whose weight is computed in forward by code no rule knows (a
    hand-written weight standardisation; timm's StdConv layers have their own
    rule, :class:`~graphprune.rules.normalization.StandardizedConvRule`):
    slicing its inputs would change what it computes its weight from, so what
    it reads and writes is kept."""
    reason = (f"{describe(node)} (node {node.name}) computes its weight in forward (weight standardisation "
              "or another reparametrisation): its input and output channels are kept")
    for arg in tensor_args(node):
        code = ctx.code(arg)
        if isinstance(code, torch.Tensor):
            ctx.pin_code(code, reason)
    return opaque(node, ctx, reason)


AtenConvRule.layouts = {
    **{op: (6, False) for op in ops("conv1d.default", "conv2d.default", "conv3d.default")},
    **{op: (6, False) for op in (F.conv1d, F.conv2d, F.conv3d)},
    **{op: (6, True) for op in (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)},
    **{op: (8, 6) for op in ops("convolution.default")},
    **{op: (6, True) for op in ops("conv_transpose1d.input", "conv_transpose2d.input", "conv_transpose3d.input")},
}


class AtenLinearRule:
    name = "linear"

    def parameters(self, node: fx.Node) -> list[Any]:
        return [node.args[1], argument(node, 2, "bias")]

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        x, w, b = node.args[0], node.args[1], argument(node, 2, "bias")
        weight, bias = attribute(w), attribute(b)
        if weight is None or (b is not None and bias is None):
            return None
        out_features, in_features = value(w).shape
        return linear_channels(node, ctx, owner_of(weight), x, weight, bias, in_features, out_features)


class AtenBatchNormRule:
    """aten.batch_norm (one output) and aten._native_batch_norm_legit_no_training
    (output, saved mean, saved rstd)."""

    name = "batch_norm"

    def parameters(self, node: fx.Node) -> list[Any]:
        return list(node.args[1:5])

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        x = node.args[0]
        targets = [attribute(a) for a in node.args[1:5]]
        if any(t is None and a is not None for t, a in zip(targets, node.args[1:5])):
            return None
        code = batch_norm_channels(node, ctx, x, *targets)
        out = value(node)
        if isinstance(out, (tuple, list)):
            reason = f"statistics output of {describe(node)} (node {node.name})"
            extra = []
            for meta in out[1:]:
                raw = ctx.fresh(1)
                ctx.pin(raw, reason)
                extra.append(ids.encode(raw.reshape((1,) * meta.ndim), False) if isinstance(meta, TensorMeta) else None)
            return (code, *extra)
        return code


class AtenSliceRule(LayoutRule):
    """aten.slice.Tensor(x, dim, start, end, step): ``x[:, a:b]``."""

    name = "slice"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        code = ctx.code(node.args[0])
        dim = argument(node, 1, "dim", 0) % code.ndim
        if argument(node, 4, "step", 1) != 1 and dim in ids.varying_dims(code):
            ctx.pin_code(code, f"sliced with a step by {describe(node)} (node {node.name})")
        return super().analyze(node, ctx)

    def materialized_dims(self, node: fx.Node, ctx: AnalysisContext) -> set[int] | None:
        dim = argument(node, 1, "dim", 0)
        return {dim % ctx.code(node.args[0]).ndim} if isinstance(dim, int) else None

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        source = node.args[0]
        dim = argument(node, 1, "dim", 0) % value(source).ndim
        cum = rw.kept_prefix(source, dim)
        if cum is None:
            return
        start, stop, _ = slice(argument(node, 2, "start"), argument(node, 3, "end")).indices(cum.numel() - 1)
        set_argument(node, 2, "start", int(cum[start]))
        set_argument(node, 3, "end", int(cum[max(stop, start)]))


class AtenSelectRule(LayoutRule):
    """aten.select.int(x, dim, index): picks one position; pinned across channels."""

    name = "select"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        code = ctx.code(node.args[0])
        if argument(node, 1, "dim", 0) % code.ndim in ids.varying_dims(code):
            ctx.pin_code(code, f"indexed channel by channel by {describe(node)} (node {node.name})")
        return super().analyze(node, ctx)

    def materialized_dims(self, node: fx.Node, ctx: AnalysisContext) -> set[int] | None:
        dim = argument(node, 1, "dim", 0)
        return {dim % ctx.code(node.args[0]).ndim} if isinstance(dim, int) else None


register_rule(*AtenConvRule.layouts)(AtenConvRule)
register_rule(*ops("linear.default"), F.linear)(AtenLinearRule)
register_rule(*ops("batch_norm.default", "_native_batch_norm_legit_no_training.default"))(AtenBatchNormRule)
register_rule(*ops("native_layer_norm.default", "native_group_norm.default"))(ChannelMixingNormRule)
register_rule(*ops("layer_norm.default"))(LayerNormRule)
register_rule(*ops("group_norm.default"))(GroupNormRule)
register_rule(*ops("pow.Tensor_Scalar", "pow.Tensor_Tensor", "pow.Scalar"))(PowerRule)
register_rule(*ops("pad.default", "constant_pad_nd.default"))(PadRule)
register_rule(*ops("matmul.default", "bmm.default"))(MatmulRule)
register_rule(*ops("scaled_dot_product_attention.default"))(ScaledDotProductAttentionRule)
register_rule(*ops("unbind.int"))(UnbindRule)
register_rule(*ops(
    "relu.default", "relu_.default", "silu.default", "silu_.default", "gelu.default", "sigmoid.default",
    "tanh.default", "hardswish.default", "hardswish_.default", "hardsigmoid.default", "hardtanh.default",
    "hardtanh_.default", "leaky_relu.default", "elu.default", "mish.default", "clamp.default", "clamp_min.default",
    "clamp_max.default", "dropout.default", "clone.default", "alias.default", "contiguous.default",
    "exp.default", "abs.default", "neg.default", "_to_copy.default", "detach.default", "sqrt.default",
    "rsqrt.default", "square.default",
    "dropout_.default", "hardsigmoid_.default", "sigmoid_.default", "tanh_.default", "gelu_.default",
    "leaky_relu_.default", "elu_.default", "clamp_.default", "mish_.default", "feature_dropout.default",
))(PointwiseRule)
register_rule(*ops(
    "max_pool2d.default", "max_pool1d.default", "max_pool3d.default", "avg_pool2d.default", "avg_pool1d.default",
    "avg_pool3d.default", "adaptive_avg_pool2d.default", "adaptive_avg_pool1d.default",
    "_adaptive_avg_pool2d.default", "adaptive_max_pool2d.default", "upsample_nearest2d.vec",
    "upsample_nearest2d.default", "upsample_bilinear2d.vec", "upsample_bilinear2d.default",
    "_upsample_nearest_exact2d.vec",
))(SpatialRule)
register_rule(*ops(
    "add.Tensor", "add_.Tensor", "add.Scalar", "add_.Scalar", "sub.Tensor", "sub_.Tensor", "sub.Scalar", "rsub.Scalar",
    "maximum.default", "minimum.default",
))(ElementwiseRule)
register_rule(*ops("mul.Tensor", "mul_.Tensor", "mul.Scalar", "mul_.Scalar"))(ProductRule)
register_rule(*ops("div.Tensor", "div_.Tensor", "div.Scalar", "div_.Scalar"))(QuotientRule)
register_rule(*ops("squeeze.dim", "squeeze.dims", "flatten.using_ints"))(LayoutRule)
register_rule(*ops("permute.default", "transpose.int", "unsqueeze.default", "t.default"))(DimMovingRule)
register_rule(*ops("cat.default"))(ConcatRule)
register_rule(*ops("stack.default"))(StackRule)
register_rule(*ops("view.default", "reshape.default", "_unsafe_view.default", "expand.default"))(ShapeArgsRule)
register_rule(*ops("split.Tensor", "split_with_sizes.default", "chunk.default"))(SplitRule)
register_rule(*ops("slice.Tensor"))(AtenSliceRule)
register_rule(*ops("select.int"))(AtenSelectRule)
register_rule(*ops("amax.default", "amin.default"))(ReductionRule)
register_rule(*ops("mean.dim"))(MeanRule)
register_rule(*ops("sum.dim_IntList"))(SumRule)
register_rule(*ops("softmax.int", "_softmax.default", "log_softmax.int", "_log_softmax.default"))(SoftmaxRule)

__all__ = ["AtenBatchNormRule", "AtenConvRule", "AtenLinearRule", "AtenSelectRule", "AtenSliceRule"]
