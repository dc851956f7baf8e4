"""Patch merging: torchvision's Swin joins the four 2x2 phases of a
channels-last map along its channels (``_patch_merging_pad``, which fx keeps
as one call), so each input channel appears four times in the output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torchvision.models.swin_transformer import _patch_merging_pad

from .. import ids
from .base import describe
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext


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


register_rule(_patch_merging_pad)(PatchMergingRule)
