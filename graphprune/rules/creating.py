"""Channel-creating ops: convolutions and linear layers.

A dense conv gives its output fresh channel ids; its weight's output dim
*writes* them and its input dim *consumes* the incoming ids. A depthwise conv
(one filter per input channel) passes ids through. Other grouped convs couple
channels at the same position in every group, so that pruning removes the same
positions from each group and ``groups`` stays valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn

from .. import ids
from .base import channel_line, describe, qualified, value
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext
    from ..rewriting import RewriteContext


def consume(ctx: AnalysisContext, node: fx.Node, code: torch.Tensor, dim: int, size: int) -> torch.Tensor | None:
    """The raw id of each of the ``size`` channels along ``dim`` that an op
    reads, checking that dropped channels arrive as exact zeros: a channel
    that is not zero there is pinned."""
    line = channel_line(ctx, node, code, dim, size)
    if line is None:
        return None
    nonzero = ~ids.zero_bits(line)
    if bool(nonzero.any()):
        ctx.pin(
            ids.raw_ids(line[nonzero]),
            f"not zero when dropped where {describe(node)} (node {node.name}) reads it "
            "(it passes an op that does not map 0 to 0, such as a bias, sigmoid or + constant)",
        )
    return ids.raw_ids(line)


def out_code(raw: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim % ndim] = raw.numel()
    return ids.encode(raw.reshape(shape), True)


@dataclass(frozen=True)
class ConvCall:
    """What a conv rule needs to know, whichever form the conv takes."""

    name: str  # producer name: the module path, or the weight's owner
    x: fx.Node
    weight: str
    bias: str | None
    in_channels: int
    out_channels: int
    groups: int
    transposed: bool
    #: the weight is standardised per filter in forward: its dropped input
    #: columns count in the statistics, so the mask zeroes them too
    standardized: bool = False


def conv_channels(node: fx.Node, ctx: AnalysisContext, conv: ConvCall) -> torch.Tensor:
    """Channel analysis of a convolution (module, functional or ATen)."""
    out_ndim = value(node).ndim
    in_ch, out_ch, groups = conv.in_channels, conv.out_channels, conv.groups
    out_dim, in_dim = (1, 0) if conv.transposed else (0, 1)
    incoming = consume(ctx, node, ctx.code(conv.x), 1, in_ch)
    if incoming is None:
        incoming = ctx.fresh(in_ch)
        ctx.pin(incoming, f"input of {describe(node)} could not be followed")

    if groups == 1:
        raw = ctx.fresh(out_ch)
        ctx.add_slot(conv.weight, in_dim, incoming, writes=conv.standardized, kind="input")
        ctx.add_producer(conv.name, conv.weight, out_dim, raw)
        ctx.add_slot(conv.weight, out_dim, raw, writes=True, kind="filter")
    elif groups == in_ch and out_ch == in_ch:
        # depthwise: output channel c is input channel c, filter c writes it
        ctx.depthwise.add(node.name)
        raw = incoming
        ctx.add_slot(conv.weight, 0, raw, writes=True, kind="filter")
    elif not conv.transposed:
        per_in = incoming.reshape(groups, in_ch // groups)
        ctx.unify(per_in[:1].expand_as(per_in), per_in)
        raw = ctx.fresh(out_ch)
        per_out = raw.reshape(groups, out_ch // groups)
        ctx.unify(per_out[:1].expand_as(per_out), per_out)
        ctx.add_slot(conv.weight, 1, per_in[0], writes=conv.standardized, kind="input")
        ctx.add_producer(conv.name, conv.weight, 0, raw)
        ctx.add_slot(conv.weight, 0, raw, writes=True, kind="filter")
    else:
        reason = f"grouped transposed conv {describe(node)} is not pruned"
        ctx.pin(incoming, reason)
        raw = ctx.fresh(out_ch)
        ctx.pin(raw, reason)
        return out_code(raw, out_ndim, 1)
    if conv.bias is not None:
        ctx.add_slot(conv.bias, 0, raw, writes=True, kind="bias")
    return out_code(raw, out_ndim, 1)


class ConvRule:
    """nn.Conv1d/2d/3d (weight: out, in/groups, k...)."""

    name = "conv"
    transposed = False

    standardized = False

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        module = ctx.module(node.target)
        path = str(node.target)
        conv = ConvCall(
            path, node.args[0], qualified(path, "weight"),
            qualified(path, "bias") if module.bias is not None else None,
            module.in_channels, module.out_channels, module.groups, self.transposed, self.standardized,
        )
        return conv_channels(node, ctx, conv)

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        self.fix_module(rw.gm.get_submodule(node.target))

    def fix_module(self, module: nn.Module) -> None:
        w = module.weight
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            # depthwise (the analysis keeps output c = input c): one group per kept channel
            module.groups = module.in_channels = module.out_channels = w.shape[0]
        elif self.transposed:
            module.in_channels = w.shape[0]
            module.out_channels = w.shape[1] * module.groups
        else:
            module.out_channels = w.shape[0]
            module.in_channels = w.shape[1] * module.groups


class ConvTransposeRule(ConvRule):
    """nn.ConvTranspose1d/2d/3d (weight: in, out/groups, k...)."""

    name = "conv_transpose"
    transposed = True


def linear_channels(node: fx.Node, ctx: AnalysisContext, name: str, x: fx.Node, weight: str, bias: str | None,
                    in_features: int, out_features: int) -> torch.Tensor:
    """Channel analysis of a linear layer (module, functional or ATen)."""
    incoming = consume(ctx, node, ctx.code(x), -1, in_features)
    if incoming is None:
        incoming = ctx.fresh(in_features)
        ctx.pin(incoming, f"input of {describe(node)} could not be followed")
    raw = ctx.fresh(out_features)
    ctx.add_slot(weight, 1, incoming, writes=False, kind="input")
    ctx.add_slot(weight, 0, raw, writes=True, kind="filter")
    if bias is not None:
        ctx.add_slot(bias, 0, raw, writes=True, kind="bias")
    ctx.add_producer(name, weight, 0, raw)
    return out_code(raw, value(node).ndim, -1)


class LinearRule:
    name = "linear"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        module = ctx.module(node.target)
        path = str(node.target)
        bias = qualified(path, "bias") if module.bias is not None else None
        return linear_channels(node, ctx, path, node.args[0], qualified(path, "weight"), bias,
                               module.in_features, module.out_features)

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        self.fix_module(rw.gm.get_submodule(node.target))

    def fix_module(self, module: nn.Module) -> None:
        module.out_features, module.in_features = module.weight.shape


register_rule(nn.Conv1d, nn.Conv2d, nn.Conv3d)(ConvRule)
register_rule(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)(ConvTransposeRule)
register_rule(nn.Linear)(LinearRule)
