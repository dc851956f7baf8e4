"""Normalisation layers.

BatchNorm is per-channel: its gamma and beta *write* the channel (the masked
model zeroes them, so a dropped channel leaves BN as an exact zero), its
running statistics are sliced with it.

LayerNorm, GroupNorm and RMSNorm normalise over channels: the statistics of a
kept channel depend on the dropped ones, which are zeros in the masked model.
Their compact form counts those zeros (:mod:`graphprune.norms`), so they are
per channel too. LocalResponseNorm (and a LayerNorm over several dims) mixes
channels: what it normalises is pinned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .. import ids
from ..norms import (
    CompactGroupNorm,
    CompactLayerNorm,
    CompactRMSNorm,
    CompactStandardizedConv2d,
    counted_group_norm,
    counted_layer_norm,
    counted_rms_norm,
)
from .base import argument, channel_line, describe, opaque, qualified, tensor_args, value
from .creating import ConvRule
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext
    from ..rewriting import RewriteContext


def batch_norm_channels(
    node: fx.Node, ctx: AnalysisContext, x: fx.Node, weight: str | None, bias: str | None,
    running_mean: str | None, running_var: str | None,
) -> Any:
    """Channel analysis of batch norm (module, functional or ATen): per channel,
    gamma and beta write the channel, running statistics are sliced with it."""
    code = ctx.code(x)
    line = channel_line(ctx, node, code, 1, value(x).shape[1])
    if line is None:
        return code
    raw = ids.raw_ids(line)
    for target, kind in ((weight, "norm_scale"), (bias, "norm_shift")):
        if target is not None:
            ctx.add_slot(target, 0, raw, writes=True, kind=kind)
    for target in (running_mean, running_var):
        if target is not None:
            ctx.add_slot(target, 0, raw, writes=False, kind="stat")
    # Without beta to mask, (0 - mean) / std * gamma is not zero.
    return code if bias is not None else ids.with_zero(code, False)


class BatchNormRule:
    name = "batch_norm"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        module = ctx.module(node.target)
        path = str(node.target)
        affine = module.affine
        stats = module.running_mean is not None
        return batch_norm_channels(
            node, ctx, node.args[0],
            qualified(path, "weight") if affine else None,
            qualified(path, "bias") if affine else None,
            qualified(path, "running_mean") if stats else None,
            qualified(path, "running_var") if stats else None,
        )

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        self.fix_module(rw.gm.get_submodule(node.target))

    def fix_module(self, module: nn.Module) -> None:
        source = module.weight if module.affine else module.running_mean
        if source is not None:
            module.num_features = source.shape[0]


class FunctionalBatchNormRule:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)`` on
    parameters read in forward: timm's fused norm + activation layers
    (``BatchNormAct2d``) and anyone's hand-written BatchNorm. Prunes like the
    module; a batch norm of something computed (no parameters: timm's weight
    standardisation, which normalises a weight) is per channel too."""

    name = "batch_norm"
    ARGS = ("running_mean", "running_var", "weight", "bias")

    def _args(self, node: fx.Node) -> list[Any]:
        return [argument(node, i + 1, name) for i, name in enumerate(self.ARGS)]

    def parameters(self, node: fx.Node) -> list[Any]:
        return [a for a in self._args(node) if a is not None]

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        args = self._args(node)
        targets = [str(a.target) if isinstance(a, fx.Node) and a.op == "get_attr" else None for a in args]
        if any(t is None and a is not None for t, a in zip(targets, args)):
            reason = (f"normalised by {describe(node)} (node {node.name}) with statistics or parameters computed "
                      "in forward (a weight standardisation written out): kept")
            ctx.pin_code(ctx.code(node.args[0]), reason)
            return opaque(node, ctx, reason)
        running_mean, running_var, weight, bias = targets
        return batch_norm_channels(node, ctx, node.args[0], weight, bias, running_mean, running_var)


def counted_norm_channels(node: fx.Node, ctx: AnalysisContext, code: torch.Tensor, dim: int, size: int,
                          weight: str | None, bias: str | None, keeps_zero: bool) -> Any:
    """Channel analysis of a norm whose statistics count the dropped zeros
    (LayerNorm, GroupNorm, RMSNorm; see :mod:`graphprune.norms`): per channel
    along ``dim``; gamma and beta write the channel; a channel that is not
    zero when dropped is kept (it would change the statistics of the others).
    ``keeps_zero``: a dropped channel's output is zero (gamma masked, or RMS)."""
    line = channel_line(ctx, node, code, dim, size)
    if line is None:
        return ids.with_zero(code, False)
    nonzero = ~ids.zero_bits(line)
    if bool(nonzero.any()):
        ctx.pin(ids.raw_ids(line[nonzero]), f"not zero when dropped where {describe(node)} (node {node.name}) "
                "normalises it (it would change the statistics of the kept channels)")
    raw = ids.raw_ids(line)
    for target, kind in ((weight, "norm_scale"), (bias, "norm_shift")):
        if target is not None:
            ctx.add_slot(target, 0, raw, writes=True, kind=kind)
    return code if keeps_zero else ids.with_zero(code, False)


def parameter_names(node: fx.Node, ctx: AnalysisContext, positions: dict[str, int]) -> dict[str, str | None] | None:
    """The parameters a norm reads, by name (``weight``, ``bias``): the
    module's, or the ``get_attr`` targets of a functional call; None where a
    functional call's parameter is computed in forward."""
    if node.op == "call_module":
        module, path = ctx.module(node.target), str(node.target)
        return {k: qualified(path, k) if getattr(module, k, None) is not None else None for k in positions}
    names = {}
    for key, position in positions.items():
        arg = argument(node, position, key)
        if arg is not None and not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
            return None
        names[key] = str(arg.target) if arg is not None else None
    return names


def swap_module(rw: RewriteContext, node: fx.Node, make: Any) -> None:
    """Put ``make(layer)`` where the compact graph's layer called by ``node`` was."""
    parent, _, name = str(node.target).rpartition(".")
    rw.gm.get_submodule(parent)._modules[name] = make(rw.gm.get_submodule(str(node.target)))


class LayerNormRule:
    """LayerNorm over the last dim (``nn.LayerNorm``, ``F.layer_norm``): per
    channel once its statistics count the dropped zeros. Over several dims it
    mixes what it normalises: pinned."""

    name = "layer_norm"
    PARAMETERS = {"weight": 2, "bias": 3}

    def parameters(self, node: fx.Node) -> list[Any]:
        return [a for a in (argument(node, i, k) for k, i in self.PARAMETERS.items()) if a is not None]

    def normalized_shape(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        if node.op == "call_module":
            return tuple(ctx.module(node.target).normalized_shape)
        shape = argument(node, 1, "normalized_shape")
        return tuple(shape) if isinstance(shape, (tuple, list)) else shape

    def keeps_zero(self, names: dict[str, str | None]) -> bool:
        return names["weight"] is not None  # (0 - mean) / std * 0 + 0 = 0

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        names, shape = parameter_names(node, ctx, self.PARAMETERS), self.normalized_shape(node, ctx)
        code = ctx.code(node.args[0])
        if names is None or not isinstance(shape, tuple) or len(shape) != 1 or not isinstance(code, torch.Tensor):
            return ChannelMixingNormRule().analyze(node, ctx)
        return counted_norm_channels(node, ctx, code, code.ndim - 1, shape[0], names["weight"], names.get("bias"),
                                     self.keeps_zero(names))

    compact, counted = CompactLayerNorm, staticmethod(counted_layer_norm)

    def counted_args(self, node: fx.Node, total: int) -> tuple:
        """The functional call's arguments for ``counted``."""
        return (node.args[0], total, argument(node, 2, "weight"), argument(node, 3, "bias"),
                argument(node, 4, "eps", 1e-5))

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        cum = rw.kept_prefix(node.args[0], -1)
        if cum is None:
            return
        total, kept = cum.numel() - 1, int(cum[-1])
        if node.op == "call_module":
            swap_module(rw, node, lambda layer: self.compact(layer, total, kept))
            return
        node.target, node.args, node.kwargs = self.counted, self.counted_args(node, total), {}


class RMSNormRule(LayerNormRule):
    """RMSNorm over the last dim (``nn.RMSNorm``, ``F.rms_norm``): as LayerNorm,
    its sum of squares divided by the original count; a dropped zero stays zero."""

    name = "rms_norm"
    PARAMETERS = {"weight": 2}

    def keeps_zero(self, names: dict[str, str | None]) -> bool:
        return True  # 0 * rsqrt(...) = 0

    compact, counted = CompactRMSNorm, staticmethod(counted_rms_norm)

    def counted_args(self, node: fx.Node, total: int) -> tuple:
        return (node.args[0], total, argument(node, 2, "weight"), argument(node, 3, "eps"))


class GroupNormRule:
    """GroupNorm (``nn.GroupNorm``, ``F.group_norm``): per channel once each
    group's statistics count its dropped zeros; a group that keeps no channel
    is gone. Each group may lose a different number of channels."""

    name = "group_norm"
    PARAMETERS = {"weight": 2, "bias": 3}

    def parameters(self, node: fx.Node) -> list[Any]:
        return [a for a in (argument(node, i, k) for k, i in self.PARAMETERS.items()) if a is not None]

    @staticmethod
    def num_groups(node: fx.Node, layer: nn.Module | None) -> Any:
        return layer.num_groups if node.op == "call_module" else argument(node, 1, "num_groups")

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        names, code = parameter_names(node, ctx, self.PARAMETERS), ctx.code(node.args[0])
        groups = self.num_groups(node, ctx.module(node.target) if node.op == "call_module" else None)
        if names is None or not isinstance(groups, int) or not isinstance(code, torch.Tensor):
            return ChannelMixingNormRule().analyze(node, ctx)
        return counted_norm_channels(node, ctx, code, 1, value(node.args[0]).shape[1], names["weight"],
                                     names["bias"], names["weight"] is not None)

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        cum = rw.kept_prefix(node.args[0], 1)
        if cum is None:
            return
        layer = rw.gm.get_submodule(str(node.target)) if node.op == "call_module" else None
        channels, count = cum.numel() - 1, self.num_groups(node, layer)
        size = channels // count
        kept = (cum[1:] - cum[:-1]).bool()
        original = torch.arange(channels)[kept] // size
        groups = tuple(int(g) for g in torch.unique(original, return_inverse=True)[1])
        if node.op == "call_module":
            swap_module(rw, node, lambda layer: CompactGroupNorm(layer, groups))
            return
        node.target = counted_group_norm
        node.args = (node.args[0], groups, size, argument(node, 2, "weight"), argument(node, 3, "bias"),
                     argument(node, 4, "eps", 1e-5))
        node.kwargs = {}


class StandardizedConvRule(ConvRule):
    """A conv that standardises its weight per filter in forward (timm's
    ``StdConv2d``, ``ScaledStdConv2d`` and their ``Same`` variants), kept as one
    call: a filter's statistics span its inputs and kernel, so they count the
    dropped input columns as zeros (the masked model zeroes them; the compact
    layer divides by the original count, :class:`CompactStandardizedConv2d`).
    Dropping a filter slices its statistics and its ``gain`` with it."""

    name = "standardized_conv"
    whole = True
    standardized = True

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        code = super().analyze(node, ctx)
        path = str(node.target)
        filters = ctx.slots.get((qualified(path, "weight"), 0))
        if "gain" in ctx.module(node.target)._parameters and filters is not None:
            ctx.add_slot(qualified(path, "gain"), 0, filters.ids, writes=True, kind="norm_scale")
        return code

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        super().rewrite(node, rw)
        cum = rw.kept_prefix(node.args[0], 1)
        layer = rw.gm.get_submodule(str(node.target))
        if cum is None or layer.groups == layer.in_channels == layer.out_channels:
            return  # no input column dropped (a depthwise filter has one input)
        total = (cum.numel() - 1) // layer.groups * layer.weight[0, 0].numel()
        swap_module(rw, node, lambda layer: CompactStandardizedConv2d(layer, total))


class ChannelMixingNormRule:
    """Normalisation whose statistics span channels: pin what it normalises."""

    name = "channel_mixing_norm"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        reason = f"normalised together by {describe(node)} (node {node.name}), which mixes channels"
        for arg in tensor_args(node):
            code = ctx.code(arg)
            if code is not None:
                ctx.pin_code(code, reason)
        return ids.with_zero(ctx.code(node.args[0]), False)


register_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)(BatchNormRule)
register_rule(F.batch_norm, torch.batch_norm)(FunctionalBatchNormRule)
register_rule(nn.LayerNorm, F.layer_norm)(LayerNormRule)
register_rule(nn.RMSNorm, F.rms_norm)(RMSNormRule)
register_rule(nn.GroupNorm, F.group_norm)(GroupNormRule)
register_rule(nn.LocalResponseNorm, F.local_response_norm)(ChannelMixingNormRule)

register_rule(*(f"timm.layers.std_conv.{name}" for name in ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d",
                                                             "ScaledStdConv2dSame")))(StandardizedConvRule)
