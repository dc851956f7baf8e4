"""Mask pass: the masked model, a copy where dropped channels are exact zeros,
and stay exact zeros while the user fine-tunes it (see :mod:`graphprune.masks`).

In ``per_layer`` mode each layer zeroes its own choice. With ``mask_bn=False``
only filters are zeroed (the paper's "without BN masking" ablation): a dropped
channel is then a constant, which the fold pass deals with.
"""

from __future__ import annotations

import copy
from itertools import chain
from typing import Any

import torch
import torch.nn as nn

from ..masks import COMPILE_KEY, FILTER_KINDS, CompileRecord, apply_masks
from ..pipeline import CompileState


class MaskPass:
    name = "mask"
    requires = ("graph", "channels", "plan")
    provides = ("masked",)

    def __call__(self, state: CompileState) -> None:
        # Its own tensors (it is trained; the graph's are the caller's), tied
        # ones still tied: cloned into the memo, which is faster than letting
        # deepcopy pickle its way through each parameter.
        memo: dict[int, Any] = {}
        for tensor in chain(state.graph.parameters(), state.graph.buffers()):
            if id(tensor) not in memo:
                clone = tensor.detach().clone()
                memo[id(tensor)] = nn.Parameter(clone, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else clone
        masked = copy.deepcopy(state.graph, memo)
        kinds = None if state.config.mask_bn else FILTER_KINDS
        apply_masks(masked, state.channels, state.plan.raw_dropped, kinds)
        masked.meta[COMPILE_KEY] = CompileRecord(
            state.plan, state.config, tuple(x.clone() if isinstance(x, torch.Tensor) else x
                                            for x in state.example_inputs), state.frontend,
        )
        state.masked = masked.eval()
