"""Channel masks: the dropped channels of a model held at exact zeros.

Every slot that *writes* a dropped channel (filter, bias, BatchNorm gamma and
beta, a parameter added in forward) is zeroed, so the channel outputs exactly
zero, as in the paper. The masked model must stay the user's model (same
classes, module tree and ``state_dict`` keys, picklable, fusable by the
user's framework), so the zeros are held by hooks, not by replacing tensors:

- a gradient hook on each masked parameter multiplies its gradient by the
  mask, so an optimizer never moves a dropped entry: SGD with momentum and
  weight decay, Adam and AdamW all leave an entry whose value, gradient and
  state are zero at zero, and DistributedDataParallel reduces the masked
  gradient;
- a forward pre-hook (:class:`ChannelMaskHook`) on each module that holds
  masked tensors checks before every forward that the dropped entries are
  zero and zeroes them if something else wrote them (``load_state_dict``, an
  unusual optimizer); it also puts the gradient hooks back on a tensor that
  lost them (a deep copy, an unpickled model), so they follow the model.

:func:`keep_masks` computes the masks from a plan; :func:`apply_masks`
installs them; :func:`channel_masks` reads them back; :func:`bake` returns a
copy without hooks, each masked tensor multiplied by its mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from .analysis import ChannelGraph
from .tensors import split_target

if TYPE_CHECKING:
    from .config import PruneConfig
    from .contract import Contract
    from .plan import PruningPlan

#: the attribute of a masked model's root that holds its :class:`CompileRecord`
RECORD_ATTR = "_graphprune_compile"

#: slot kinds zeroed without BN masking: only what multiplies the input.
FILTER_KINDS = frozenset({"filter"})


@dataclass
class CompileRecord:
    """What the masked model carries so it can be reconstructed after training."""

    plan: PruningPlan
    config: PruneConfig
    example_inputs: tuple
    frontend: str | None
    contract: Contract | None = None


class KeepGrad:
    """Gradient hook: the gradient times the 0/1 mask (a picklable object, not a closure)."""

    def __init__(self, keep: torch.Tensor):
        self.keep = keep

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.keep.to(grad.device, grad.dtype)


class ChannelMaskHook:
    """Forward pre-hook of a module holding masked tensors: ``keep[name]`` is
    the 0/1 mask of its tensor ``name``, broadcastable to it.

    A tensor is looked at again only when it changed since (its version
    counter, storage or identity), and then only its dropped rows."""

    def __init__(self, keep: dict[str, torch.Tensor]):
        self.keep = keep
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._rows = {name: dropped_rows(k) for name, k in keep.items()}

    def __getstate__(self) -> dict:
        return {"keep": self.keep}  # what was seen belongs to this process's tensors

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["keep"])

    def zero(self, module: nn.Module) -> None:
        """Zero the masked entries now, without looking first (a fresh copy), and hook the gradients."""
        self(module, (), look=False)

    def __call__(self, module: nn.Module, args: Any, look: bool = True) -> None:
        for name, keep in self.keep.items():
            tensor = getattr(module, name, None)
            if not isinstance(tensor, torch.Tensor):
                continue
            if tensor.requires_grad and not _has_keep_grad(tensor):
                tensor.register_hook(KeepGrad(keep))
            seen = (id(tensor), tensor._version, tensor.data_ptr())
            if self._seen.get(name) == seen:
                continue
            with torch.no_grad():
                if not look or any(bool(tensor.index_select(dim, rows.to(tensor.device)).ne(0).any())
                       for dim, rows in self._rows[name]):
                    tensor.mul_(keep.to(tensor.device, tensor.dtype))
            self._seen[name] = (id(tensor), tensor._version, tensor.data_ptr())


def dropped_rows(keep: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """(dim, indices) of the rows a mask zeroes, for each dim it varies along."""
    out = []
    for dim in range(keep.ndim):
        if keep.shape[dim] > 1:
            line = keep.amax(dim=[d for d in range(keep.ndim) if d != dim]) if keep.ndim > 1 else keep
            rows = (line == 0).nonzero().flatten()
            if rows.numel():
                out.append((dim, rows))
    return out


def _has_keep_grad(tensor: torch.Tensor) -> bool:
    hooks = getattr(tensor, "_backward_hooks", None) or {}
    return any(isinstance(h, KeepGrad) for h in hooks.values())


def keep_masks(model: nn.Module, channels: ChannelGraph, raw_dropped: torch.Tensor,
               kinds: frozenset[str] | None = None, skip: frozenset[str] | set[str] = frozenset()
               ) -> dict[str, torch.Tensor]:
    """Per tensor name, a 0/1 mask broadcastable to the tensor: 0 where some
    slot writing a dropped channel indexes it (only slots of ``kinds``, if
    given; tensors ``model`` does not have, and those named in ``skip``, are left out)."""
    masks: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules(remove_duplicate=False))
    for slot in channels.slots:
        if not slot.writes or (kinds is not None and slot.kind not in kinds) or slot.target in skip:
            continue
        dropped = raw_dropped[slot.ids]
        if not bool(dropped.any()):
            continue
        owner, attr = split_target(slot.target)
        tensor = getattr(modules.get(owner), attr, None)
        if not isinstance(tensor, torch.Tensor):
            continue
        shape = [1] * tensor.ndim
        shape[slot.dim] = tensor.shape[slot.dim]
        line = (~dropped).to(tensor.dtype).reshape(shape)
        masks[slot.target] = masks[slot.target] * line if slot.target in masks else line
    return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked entries of ``model`` in place and keep them zero
    through training (see the module docstring)."""
    by_owner: dict[str, dict[str, torch.Tensor]] = {}
    for target, keep in masks.items():
        owner, attr = split_target(target)
        by_owner.setdefault(owner, {})[attr] = keep
    for owner, keep in by_owner.items():
        module = model.get_submodule(owner)
        hook = ChannelMaskHook(keep)
        hook.zero(module)
        module.register_forward_pre_hook(hook)


def channel_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The masks :func:`apply_masks` installed, per tensor name (the product where one tensor has several)."""
    out: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, ChannelMaskHook):
                for attr, keep in hook.keep.items():
                    target = f"{name}.{attr}" if name else attr
                    out[target] = out[target] * keep if target in out else keep
    return out


def remove_masks(model: nn.Module) -> None:
    """Take the mask hooks off ``model`` (in place), its tensors as they are."""
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, ChannelMaskHook):
                del module._forward_pre_hooks[key]
        for tensor in list(module._parameters.values()) + list(module._buffers.values()):
            hooks = getattr(tensor, "_backward_hooks", None)
            if hooks:
                for key in [k for k, h in hooks.items() if isinstance(h, KeepGrad)]:
                    del hooks[key]


def bake(model: nn.Module) -> None:
    """In place: every masked tensor of ``model`` times its mask, and the
    mask hooks removed (what reconstruction and saving start from)."""
    with torch.no_grad():
        for target, keep in channel_masks(model).items():
            owner, attr = split_target(target)
            tensor = getattr(model.get_submodule(owner), attr)
            tensor.mul_(keep.to(tensor.device, tensor.dtype))
    remove_masks(model)


def compile_record(model: nn.Module) -> CompileRecord | None:
    """The :class:`CompileRecord` a masked model carries, if it is one."""
    record = model.__dict__.get(RECORD_ATTR)
    return record if isinstance(record, CompileRecord) else None
