"""Mask pass: the masked model, a copy of the user's model whose dropped
channels are exact zeros, and stay exact zeros while the user fine-tunes it
(see :mod:`graphprune.masks`).

In ``per_layer`` mode each layer zeroes its own choice. With ``mask_bn=False``
only filters are zeroed (the paper's "without BN masking" ablation): a dropped
channel is then a constant, which the fold pass deals with. The masked model
carries a :class:`~graphprune.masks.CompileRecord`, which
:func:`graphprune.reconstruct` reads after training.

The copy is built when first asked for (``result.masked``, or a pass that
requires it, such as verification), not here: with ``verify=False`` a user
who wants only the compact model does not pay for a second copy of the
model. It is built from the user's model as it was at compile time, so the
pass records that model's :func:`~graphprune.copying.fingerprint`; if the
model changed before the masked one was asked for (trained, reloaded,
edited), the masked model cannot be built and an error says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from ..copying import fingerprint, owned_copy
from ..errors import GraphpruneError
from ..masks import FILTER_KINDS, RECORD_ATTR, CompileRecord, apply_masks, keep_masks
from ..pipeline import CompileState


class MaskPass:
    name = "mask"
    requires = ("channels", "plan")
    provides = ("masked",)

    def __call__(self, state: CompileState) -> None:
        state.masked = None
        state.masked_later = Deferred(state, self.build)

    @staticmethod
    def build(state: CompileState) -> torch.nn.Module:
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
        return masked.eval()


class Deferred:
    """Builds the masked model later, from the user's model, if that is as it was."""

    def __init__(self, state: CompileState, build: Callable[[CompileState], torch.nn.Module]):
        self.state, self.build = state, build
        self.seen = fingerprint(state.model, *state.example_inputs)

    def __call__(self) -> torch.nn.Module:
        state = self.state
        if fingerprint(state.model, *state.example_inputs) != self.seen:
            raise GraphpruneError(
                "the masked model is built on first use, from the model as it was at prune(), but the model "
                "(or the example input) changed since: it was trained, reloaded or edited. Read "
                "result.masked before changing the model, or prune again")
        return self.build(state)
