"""Slicing a model's tensors to the channels a plan keeps.

:func:`compact_tensors` is what the rewrite pass does to the traced graph and
the apply pass to the user's model: every parameter and buffer indexed by
channels is cut to the kept channels (tied tensors stay tied), and where a
layer zeroed a channel that the union keeps (per-layer mode), the kept copy
is zeroed too, so the compact model computes what the masked model computes.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn as nn

from .copying import light_copy
from .masks import FILTER_KINDS, keep_masks
from .plan import PruningPlan
from .tensors import get_tensor, retie, set_tensor, split_target


def has_tensor(model: nn.Module, target: str, modules: dict[str, nn.Module]) -> bool:
    owner, attr = split_target(target)
    return isinstance(getattr(modules.get(owner), attr, None), torch.Tensor)


def compact_tensors(model: nn.Module, plan: PruningPlan, mask_bn: bool = True,
                    source: nn.Module | None = None) -> dict[tuple[str, int], torch.Tensor]:
    """Slice ``model``'s tensors in place to ``plan``'s kept channels and zero
    what a layer dropped but the union keeps; returns the kept indices per
    (tensor name, dim) sliced. ``mask_bn=False``: only filters are zeroed
    (the paper's "without BN masking"). ``source``: a model already sliced
    for ``plan`` (the compact graph, for the apply pass): a tensor it holds
    under the same name and at the sliced shape is copied from it instead
    of being sliced and zeroed again."""
    modules = dict(model.named_modules(remove_duplicate=False))
    dims_of = sliced_dims(model, plan, modules)
    tied = ties(model, dims_of, modules)  # as the model has them, before any tensor is replaced
    sliced = {key: index for key, index in plan.cut_slots().items() if key[0] in dims_of}
    taken = _take(model, source, sliced, dims_of, modules) if source is not None else set()
    # masks of the full-width tensors, so before slicing, and none for a tensor taken already sliced and zeroed
    masks = keep_masks(model, plan.channels, plan.raw_dropped, None if mask_bn else FILTER_KINDS, taken)
    slice_parameters(model, {key: index for key, index in sliced.items() if key[0] not in taken}, modules)
    for names in tied:  # names of one tensor get one sliced tensor back, still tied
        for other in names[1:]:
            if dims_of[other] == dims_of[names[0]]:
                retie(model, other, get_tensor(model, names[0], modules))
    zero_dropped(model, masks, sliced, modules)
    return sliced


def masked_graph(graph: fx.GraphModule, plan: PruningPlan, mask_bn: bool = True) -> fx.GraphModule:
    """The traced graph with the plan's masks multiplied in (new tensors where
    masked; the rest shared): the masked model in graph form, for running
    node by node (verification's search for a diverging node, the fold pass)."""
    gm = light_copy(graph)
    modules = dict(gm.named_modules(remove_duplicate=False))
    done: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for target, keep in keep_masks(gm, plan.channels, plan.raw_dropped, None if mask_bn else FILTER_KINDS).items():
            tensor = get_tensor(gm, target, modules)
            if id(tensor) not in done:
                done[id(tensor)] = tensor * keep
            set_tensor(gm, target, done[id(tensor)], modules)
    gm.recompile()
    return gm.eval()


def sliced_dims(gm: nn.Module, plan: PruningPlan, modules: dict[str, nn.Module]) -> dict[str, set[int]]:
    """Per tensor ``gm`` has (not one of a train-mode branch the eval graph
    does not call), the dims that channels index."""
    dims_of: dict[str, set[int]] = {}
    for slot in plan.channels.slots:
        if has_tensor(gm, slot.target, modules):
            dims_of.setdefault(slot.target, set()).add(slot.dim)
    return dims_of


def ties(gm: nn.Module, names: Iterable[str], modules: dict[str, nn.Module]) -> list[list[str]]:
    """``names`` grouped by the tensor they name (tied weights: several names of one tensor)."""
    by_tensor: dict[int, list[str]] = {}
    for target in names:
        by_tensor.setdefault(id(get_tensor(gm, target, modules)), []).append(target)
    return [group for group in by_tensor.values() if len(group) > 1]


def slice_parameters(gm: nn.Module, sliced: dict[tuple[str, int], torch.Tensor],
                     modules: dict[str, nn.Module]) -> None:
    """Cut each tensor to its kept indices along each dim in ``sliced``."""
    with torch.no_grad():
        for (target, dim), index in sliced.items():
            set_tensor(gm, target, get_tensor(gm, target, modules).index_select(dim, index), modules)


def _take(gm: nn.Module, source: nn.Module, sliced: dict[tuple[str, int], torch.Tensor],
          dims_of: dict[str, set[int]], modules: dict[str, nn.Module]) -> set[str]:
    """Put a copy of ``source``'s tensor in ``gm`` for every sliced name where
    it has the shape slicing would give (one copy per tensor: tied stay
    tied); returns those names."""
    theirs = dict(source.named_modules(remove_duplicate=False))
    copies: dict[int, torch.Tensor] = {}
    taken = set()
    for target in dims_of:
        if not has_tensor(source, target, theirs):
            continue
        shape = list(get_tensor(gm, target, modules).shape)
        for dim in dims_of[target]:
            if (target, dim) in sliced:
                shape[dim] = sliced[(target, dim)].numel()
        tensor = get_tensor(source, target, theirs)
        if list(tensor.shape) == shape:
            if id(tensor) not in copies:
                copies[id(tensor)] = tensor.detach().clone()
            set_tensor(gm, target, copies[id(tensor)], modules)
            taken.add(target)
    return taken


def zero_dropped(gm: nn.Module, masks: dict[str, torch.Tensor],
                 sliced: dict[tuple[str, int], torch.Tensor], modules: dict[str, nn.Module]) -> None:
    """After slicing, multiply each tensor by its mask sliced alike: what is
    left to zero are channels a layer dropped but the union keeps (per-layer
    mode). Out of place (a tensor may still be the caller's); tied tensors
    stay tied."""
    done: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for target, keep in masks.items():
            for dim in range(keep.ndim):
                if keep.shape[dim] > 1 and (target, dim) in sliced:
                    keep = keep.index_select(dim, sliced[(target, dim)])
            if bool(keep.ne(0).all()):
                continue
            tensor = get_tensor(gm, target, modules)
            if id(tensor) not in done:
                done[id(tensor)] = tensor * keep
            set_tensor(gm, target, done[id(tensor)], modules)
