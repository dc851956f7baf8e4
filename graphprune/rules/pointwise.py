"""Per-channel ops: activations, dropout, pooling, upsampling, padding, casts.

They pass channel ids through unchanged. Whether a dropped (zero) channel
stays zero is not looked up in a table: the rule runs the op on zeros and
looks (ReLU(0) = 0 keeps the zero bit; sigmoid(0) = 0.5 and ``x + 1`` clear
it). Pooling, upsampling and padding also mix positions within a channel, so
channel ids must not vary across those positions.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
import torchvision.ops

from .. import ids
from .base import TensorMeta, call, describe, qualified, substitute, tensor_args, value
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext
    from ..rewriting import RewriteContext


def maps_zero_to_zero(node: fx.Node, ctx: AnalysisContext, elementwise: bool = False) -> bool:
    """Run the op with every tensor input set to zero; True if all outputs are zero.

    An ``elementwise`` op computes each output element from the input element
    at the same position (and per-channel parameters), so its answer on zeros
    does not depend on the spatial size: it runs on inputs whose dims past the
    channel dim are cut to 1 where the channel ids do not vary along them
    (at full size only if the op refuses that shape)."""

    def zeros(n: fx.Node, small: bool) -> torch.Tensor:
        meta = value(n)
        shape = tuple(meta.shape)
        code = ctx.code(n) if small else None
        if isinstance(code, torch.Tensor) and code.ndim == len(shape):
            shape = tuple(s if d < 2 or code.shape[d] > 1 else 1 for d, s in enumerate(shape))
        return torch.zeros(shape, dtype=meta.dtype)

    for small in (True, False) if elementwise else (False,):
        args, kwargs = substitute(node, lambda n, small=small: zeros(n, small))
        with torch.no_grad():
            try:
                out = call(node, ctx.gm, args, kwargs, getattr(ctx, "modules", None))
            except Exception:  # an op that cannot run on zeros proves nothing
                if small:
                    continue
                return False
        return isinstance(out, torch.Tensor) and bool((out == 0).all())
    return False


class PointwiseRule:
    """Ids pass through; ``spatial=True`` for ops that mix positions (dims 2+)."""

    name = "pointwise"
    spatial = False

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        inputs = tensor_args(node)
        if len(inputs) != 1:
            return None  # the walker falls back to the unknown-op rule
        code = ctx.code(inputs[0])
        out_meta = value(node)
        if not isinstance(out_meta, TensorMeta) or out_meta.ndim != code.ndim:
            return None
        if self.spatial:
            mixed = [d for d in ids.varying_dims(code) if d >= 2]
            if mixed:
                ctx.pin_code(code, f"{describe(node)} (node {node.name}) mixes positions whose channels differ")
                for d in mixed:
                    code = code.narrow(d, 0, 1)
        self.add_slots(node, ctx, code)
        if not maps_zero_to_zero(node, ctx, elementwise=not self.spatial):
            code = ids.with_zero(code, False)
        return code.contiguous()

    def add_slots(self, node: fx.Node, ctx: AnalysisContext, code: torch.Tensor) -> None:
        """Per-channel parameters of the op (none for most)."""


class ConvertLikeRule(PointwiseRule):
    """``x.type_as(other)``, ``x.to(other)``: ``x`` converted to ``other``'s
    dtype and device; ``other``'s values (and channels) are not read."""

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        code, out = ctx.code(node.args[0]), value(node)
        if not isinstance(code, torch.Tensor) or not isinstance(out, TensorMeta) or out.ndim != code.ndim:
            return None
        return code.contiguous()


class SpatialRule(PointwiseRule):
    name = "spatial"
    spatial = True


class PReLURule(PointwiseRule):
    name = "prelu"

    def add_slots(self, node: fx.Node, ctx: AnalysisContext, code: torch.Tensor) -> None:
        module = ctx.module(node.target)
        if module.num_parameters > 1:
            from .base import channel_line

            line = channel_line(ctx, node, code, 1, module.num_parameters)
            if line is not None:
                ctx.add_slot(qualified(str(node.target), "weight"), 0, ids.raw_ids(line), writes=False)

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        self.fix_module(rw.gm.get_submodule(node.target))

    def fix_module(self, module: nn.Module) -> None:
        module.num_parameters = module.weight.shape[0]


class DropPathRule(PointwiseRule):
    """Stochastic depth as one call (torchvision's ``StochasticDepth``, timm's
    ``DropPath``): in training mode it scales each sample by one random draw
    (of shape batch x 1 x ..., or one for the batch), in eval mode it is the
    identity; per channel either way. Traced through, its forward passes
    ``self.training`` on, so the training-mode graph would differ from the
    eval one only there, and be traced, measured and analysed twice for nothing."""

    name = "drop_path"
    whole = True


class PadRule(SpatialRule):
    """F.pad: per-channel only while the padding stays off the channel dim."""

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        ndim = value(node).ndim
        if not isinstance(pad, (list, tuple)) or len(pad) > 2 * (ndim - 2):
            return None
        return super().analyze(node, ctx)


ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.LogSigmoid, nn.Hardshrink, nn.Softshrink, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
)
ACTIVATION_FUNCTIONS = (
    torch.relu, F.relu, F.relu6, F.hardtanh, F.elu, F.selu, F.celu, F.leaky_relu, F.gelu, F.silu,
    F.mish, F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus,
    torch.clamp, torch.clip, torch.abs, torch.neg, operator.neg, operator.abs, torch.exp, torch.sqrt, torch.square,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
    torchvision.ops.stochastic_depth,
)
ACTIVATION_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "abs",
    "neg", "exp", "sqrt", "square", "float", "double", "half", "to", "type", "detach",
    "clone", "contiguous",
)
SPATIAL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LPPool1d, nn.LPPool2d, nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d,
    nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ReplicationPad3d,
)
SPATIAL_FUNCTIONS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.interpolate, F.upsample, F.upsample_nearest, F.upsample_bilinear,
)

register_rule(*ACTIVATION_MODULES, *ACTIVATION_FUNCTIONS, *ACTIVATION_METHODS)(PointwiseRule)
register_rule(*SPATIAL_MODULES, *SPATIAL_FUNCTIONS)(SpatialRule)
register_rule(nn.PReLU)(PReLURule)
register_rule(torchvision.ops.StochasticDepth, "timm.layers.drop.DropPath")(DropPathRule)
register_rule(F.pad)(PadRule)
register_rule("type_as")(ConvertLikeRule)
