"""Normalisation layers.

BatchNorm is per-channel: its gamma and beta *write* the channel (the masked
model zeroes them, so a dropped channel leaves BN as an exact zero), its
running statistics are sliced with it.

LayerNorm, GroupNorm and LocalResponseNorm mix channels: the statistics of a
kept channel depend on the dropped ones, so the channels they normalise over
are pinned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .. import ids
from ..norms import CompactLayerNorm, counted_layer_norm
from .base import argument, channel_line, describe, opaque, qualified, tensor_args, value
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
                      "in forward (timm's weight standardisation): kept")
            ctx.pin_code(ctx.code(node.args[0]), reason)
            return opaque(node, ctx, reason)
        running_mean, running_var, weight, bias = targets
        return batch_norm_channels(node, ctx, node.args[0], weight, bias, running_mean, running_var)


class LayerNormRule:
    """LayerNorm over the last dim (``nn.LayerNorm``, ``F.layer_norm``):
    per channel once its statistics count the dropped zeros (see
    :mod:`graphprune.norms`). Its gamma and beta write the channel; a channel
    that is not zero when dropped is kept (it would change the statistics).
    Over several dims, it mixes what it normalises: pinned."""

    name = "layer_norm"

    def parameters(self, node: fx.Node) -> list[Any]:
        return [a for a in (argument(node, 2, "weight"), argument(node, 3, "bias")) if a is not None]

    def _parts(self, node: fx.Node, ctx: AnalysisContext) -> tuple[tuple, str | None, str | None] | None:
        """(normalized shape, weight name, bias name), or None where not a plain LayerNorm."""
        if node.op == "call_module":
            module, path = ctx.module(node.target), str(node.target)
            return (tuple(module.normalized_shape), qualified(path, "weight") if module.weight is not None else None,
                    qualified(path, "bias") if getattr(module, "bias", None) is not None else None)
        shape, w, b = argument(node, 1, "normalized_shape"), argument(node, 2, "weight"), argument(node, 3, "bias")
        names = [str(a.target) if isinstance(a, fx.Node) and a.op == "get_attr" else None for a in (w, b)]
        if any(n is None and a is not None for n, a in zip(names, (w, b))) or not isinstance(shape, (tuple, list)):
            return None
        return (tuple(shape), *names)

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        parts = self._parts(node, ctx)
        code = ctx.code(node.args[0])
        if parts is None or len(parts[0]) != 1 or not isinstance(code, torch.Tensor):
            return ChannelMixingNormRule().analyze(node, ctx)
        shape, weight, bias = parts
        line = channel_line(ctx, node, code, code.ndim - 1, shape[0])
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
        return code if weight is not None else ids.with_zero(code, False)  # (0 - mean) / std * 0 = 0

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        cum = rw.kept_prefix(node.args[0], -1)
        if cum is None:
            return
        total, kept = cum.numel() - 1, int(cum[-1])
        if node.op == "call_module":
            parent, _, name = str(node.target).rpartition(".")
            layer = rw.gm.get_submodule(str(node.target))
            rw.gm.get_submodule(parent)._modules[name] = CompactLayerNorm(layer, total, kept)
            return
        eps = argument(node, 4, "eps", 1e-5)
        node.target = counted_layer_norm
        node.args = (node.args[0], total, argument(node, 2, "weight"), argument(node, 3, "bias"), eps)
        node.kwargs = {}


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
register_rule(nn.GroupNorm, nn.LocalResponseNorm, F.group_norm, F.local_response_norm)(ChannelMixingNormRule)

