"""Mask pass: the masked model, a copy where dropped channels are exact zeros.

Every slot that *writes* a dropped channel (filter, bias, BatchNorm gamma and
beta, a parameter added in forward) is zeroed, so the channel outputs exactly
zero, as in the paper. In ``per_layer`` mode each layer zeroes its own choice.
"""

from __future__ import annotations

import copy

import torch
import torch.fx as fx

from ..analysis import ChannelGraph
from ..pipeline import CompileState
from ..tensors import get_tensor


def apply_masks(gm: fx.GraphModule, channels: ChannelGraph, raw_dropped: torch.Tensor) -> None:
    with torch.no_grad():
        for slot in channels.slots:
            if not slot.writes:
                continue
            dropped = raw_dropped[slot.ids].nonzero().flatten()
            if dropped.numel():
                get_tensor(gm, slot.target).index_fill_(slot.dim, dropped, 0.0)


class MaskPass:
    name = "mask"
    requires = ("graph", "channels", "plan")
    provides = ("masked",)

    def __call__(self, state: CompileState) -> None:
        masked = copy.deepcopy(state.graph)
        apply_masks(masked, state.channels, state.plan.raw_dropped)
        state.masked = masked.eval()
