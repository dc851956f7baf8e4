"""Joining tensors: cat and stack, and torchvision's Swin patch merging
(``_patch_merging_pad``, which fx keeps as one call: it joins the four 2x2
phases of a channels-last map along its channels, so each input channel
appears four times in the output)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torchvision.models.swin_transformer import _patch_merging_pad

from .. import ids
from .base import TensorMeta, describe, value
from .layout import LayoutRule
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext


def _node_codes(nodes: Any, ctx: AnalysisContext) -> list[torch.Tensor] | None:
    """The codes of a list of tensor nodes, or None if any is not a tensor."""
    if not isinstance(nodes, (list, tuple)) or not nodes:
        return None
    codes = []
    for n in nodes:
        code = ctx.code(n) if isinstance(n, fx.Node) else None
        meta = value(n)
        if not isinstance(code, torch.Tensor) or not isinstance(meta, TensorMeta) or code.ndim != meta.ndim:
            return None
        codes.append(code)
    return codes if len({c.ndim for c in codes}) == 1 else None


class ConcatRule(LayoutRule):
    """cat/stack: only the dims along which some input's channels vary (and,
    for cat, the dim joined) need their real size; the others are size 1 in
    every input and stay so. This keeps a DenseNet, which concatenates every
    earlier feature map at every layer, linear in the channels, not in the
    feature-map elements."""

    stack = False

    def materialized_dims(self, node: fx.Node, ctx: AnalysisContext) -> set[int] | None:
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        codes = _node_codes(tensors, ctx)
        if codes is None or not isinstance(dim, int) or isinstance(dim, bool):
            return None
        dims = {d for code in codes for d in ids.varying_dims(code)}
        if not self.stack:
            dims.add(dim % codes[0].ndim)
        return dims


    def channel_dim(self, node: fx.Node, ctx: AnalysisContext) -> int | None:
        """The dim along which the most inputs' channels vary (a class token
        and patch tokens both vary along C, not along the tokens joined; a
        detector's boxes and classes both along the channels joined)."""
        if self.stack:
            return None
        codes = _node_codes(node.args[0] if node.args else node.kwargs.get("tensors"), ctx)
        if codes is None:
            return None
        counts = Counter(d for code in codes for d in ids.varying_dims(code))
        ranked = counts.most_common(2)
        return ranked[0][0] if ranked and (len(ranked) == 1 or ranked[0][1] > ranked[1][1]) else None


class StackRule(ConcatRule):
    stack = True


class PatchMergingRule:
    """torchvision's Swin ``_patch_merging_pad(x)`` on (N, H, W, C): zero-pads
    H and W to even and joins the four 2x2 phases along C, so its output is
    the input's channels four times over (zeros stay zero)."""

    name = "patch_merging"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        code = ctx.code(node.args[0])
        if not isinstance(code, torch.Tensor) or len(node.args) != 1:
            return None
        if any(d != code.ndim - 1 for d in ids.varying_dims(code)):
            ctx.pin_code(code, f"{describe(node)} (node {node.name}) mixes positions whose channels differ")
            code = ids.compress(code.narrow(1, 0, 1).narrow(2, 0, 1))
        return ids.compress(torch.cat([code] * 4, dim=-1))


register_rule(torch.cat, torch.concat, torch.concatenate)(ConcatRule)
register_rule(torch.stack)(StackRule)
register_rule(_patch_merging_pad)(PatchMergingRule)
