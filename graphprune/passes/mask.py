"""Mask pass: the masked model, a copy of the user's model whose dropped
channels are exact zeros, and stay exact zeros while the user fine-tunes it
(see :mod:`graphprune.masks`).

In ``per_layer`` mode each layer zeroes its own choice. With ``mask_bn=False``
only filters are zeroed (the paper's "without BN masking" ablation): a dropped
channel is then a constant, which the fold pass deals with. The masked model
carries a :class:`~graphprune.masks.CompileRecord`, which
:func:`graphprune.reconstruct` reads after training.
"""

from __future__ import annotations

import dataclasses

import torch

from ..copying import owned_copy
from ..masks import FILTER_KINDS, RECORD_ATTR, CompileRecord, apply_masks, keep_masks
from ..pipeline import CompileState


class MaskPass:
    name = "mask"
    requires = ("channels", "plan")
    provides = ("masked",)

    def __call__(self, state: CompileState) -> None:
        masked = owned_copy(state.model)
        masked.__dict__.pop(RECORD_ATTR, None)
        kinds = None if state.config.mask_bn else FILTER_KINDS
        apply_masks(masked, keep_masks(masked, state.channels, state.plan.raw_dropped, kinds))
        contract = state.contract
        config = dataclasses.replace(  # the resolved contract: a selector function need not pickle
            state.config, outputs="all" if contract is None or contract.eval is None else list(contract.eval),
            train_outputs="all" if contract is None or contract.train is None else list(contract.train))
        masked.__dict__[RECORD_ATTR] = CompileRecord(
            state.plan, config, tuple(x.clone() if isinstance(x, torch.Tensor) else x
                                      for x in state.example_inputs), state.frontend, contract,
        )
        state.masked = masked.eval()
