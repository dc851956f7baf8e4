"""Channel masks: the dropped channels of a model held at exact zeros.

Every slot that *writes* a dropped channel (filter, bias, BatchNorm gamma and
beta, a parameter added in forward) is zeroed, so the channel outputs exactly
zero, as in the paper. The zeros are enforced by a
``torch.nn.utils.parametrize`` parametrization on each masked tensor: the
module computes with ``original * keep``, so any optimizer (momentum, weight
decay, Adam), any training loop and DistributedDataParallel see a tensor whose
dropped indices are 0 whatever they do to ``original`` (its gradient there is
0 too). :func:`bake` turns the parametrizations back into plain tensors.

The mask pass builds the masked model with :func:`apply_masks`; the rewrite
pass slices the same :func:`keep_masks` into the compact model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
import torch.nn as nn
from torch.nn.utils import parametrize

from .analysis import ChannelGraph
from .tensors import get_tensor, split_target

if TYPE_CHECKING:
    from .config import PruneConfig
    from .plan import PruningPlan

#: what ``masked.meta[COMPILE_KEY]`` holds: what :func:`graphprune.reconstruct` needs.
COMPILE_KEY = "graphprune.compile"

#: slot kinds zeroed without BN masking: only what multiplies the input.
FILTER_KINDS = frozenset({"filter"})


class ChannelMask(nn.Module):
    """Parametrization: the tensor times a 0/1 ``keep`` mask that broadcasts
    along the channel dimensions (a few bytes per channel, not a full copy)."""

    def __init__(self, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("keep", keep)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * self.keep


@dataclass
class CompileRecord:
    """What the masked model carries so it can be reconstructed after training."""

    plan: PruningPlan
    config: PruneConfig
    example_inputs: tuple
    frontend: str | None


def keep_masks(gm: fx.GraphModule, channels: ChannelGraph, raw_dropped: torch.Tensor,
               kinds: frozenset[str] | None = None) -> dict[str, torch.Tensor]:
    """Per tensor name, a 0/1 mask broadcastable to the tensor: 0 where some
    slot writing a dropped channel indexes it (only slots of ``kinds``, if given)."""
    masks: dict[str, torch.Tensor] = {}
    modules = dict(gm.named_modules(remove_duplicate=False))
    for slot in channels.slots:
        if not slot.writes or (kinds is not None and slot.kind not in kinds):
            continue
        dropped = raw_dropped[slot.ids]
        if not bool(dropped.any()):
            continue
        tensor = get_tensor(gm, slot.target, modules)
        shape = [1] * tensor.ndim
        shape[slot.dim] = tensor.shape[slot.dim]
        line = (~dropped).to(tensor.dtype).reshape(shape)
        masks[slot.target] = masks[slot.target] * line if slot.target in masks else line
    return masks


def apply_masks(gm: fx.GraphModule, channels: ChannelGraph, raw_dropped: torch.Tensor,
                kinds: frozenset[str] | None = None) -> None:
    """Zero the dropped channels of ``gm`` in place and keep them zero through
    training (parametrizations on parameters and buffers)."""
    for target, keep in keep_masks(gm, channels, raw_dropped, kinds).items():
        owner_name, attr = split_target(target)
        owner = gm.get_submodule(owner_name)
        with torch.no_grad():
            get_tensor(gm, target).mul_(keep)
        if attr in owner._parameters or attr in owner._buffers:
            parametrize.register_parametrization(owner, attr, ChannelMask(keep))
        # a plain tensor attribute is a constant: zeroing it once is enough


def bake(gm: nn.Module) -> None:
    """Replace every channel-mask parametrization of ``gm`` by its value.

    Not ``parametrize.remove_parametrizations``: a deep copy of a parametrized
    module shares its generated class, and removing the parametrization from
    the copy deletes the property from that shared class, breaking the
    original. Tied tensors stay tied.
    """
    memo: dict[int, torch.Tensor] = {}
    for module in list(gm.modules()):
        lists = getattr(module, "parametrizations", None)
        if lists is None or not all(isinstance(p, ChannelMask) for pl in lists.values() for p in pl):
            continue
        with torch.no_grad():
            values = {name: (pl.original, pl()) for name, pl in lists.items()}
        module.__class__ = module.__class__.__bases__[0]
        del module._modules["parametrizations"]
        for name, (original, value) in values.items():
            tensor = memo.get(id(original))
            if tensor is None or not torch.equal(tensor, value):
                tensor = value.detach().clone()
                if isinstance(original, nn.Parameter):
                    tensor = nn.Parameter(tensor, requires_grad=original.requires_grad)
                memo[id(original)] = tensor
            if isinstance(tensor, nn.Parameter):
                module._parameters[name] = tensor
            else:
                module._buffers[name] = tensor
