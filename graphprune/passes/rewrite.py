"""Rewrite pass: the compact model, physically smaller.

Starts from the traced graph with the masks of the plan applied (the compact
model must compute what the masked model computes, including channels a layer
zeroed but the union kept), slices every parameter and buffer indexed by
channels to the kept channels,
then lets each node's op rule fix what the node encodes about channel counts
(module attributes such as ``in_channels`` and ``groups``; split sizes, view
shapes and slice bounds in the graph).
"""

from __future__ import annotations

import copy
from itertools import chain

import torch
import torch.fx as fx
import torch.nn as nn

from ..masks import COMPILE_KEY, FILTER_KINDS, bake, keep_masks
from ..pipeline import CompileState
from ..plan import PruningPlan
from ..rewriting import RewriteContext
from ..rules import RULES
from ..tensors import get_tensor, retie, set_tensor


def slice_parameters(gm: fx.GraphModule, plan: PruningPlan,
                     modules: dict[str, nn.Module] | None = None) -> dict[tuple[str, int], torch.Tensor]:
    """Slice every slot's tensor to its kept indices; returns those indices
    per (tensor name, dim) that was sliced."""
    # Names of one tensor (tied weights) get one sliced tensor back, still tied.
    names_of: dict[int, list[str]] = {}
    dims_of: dict[str, set[int]] = {}
    for slot in plan.channels.slots:
        dims_of.setdefault(slot.target, set()).add(slot.dim)
    for target in dims_of:
        names_of.setdefault(id(get_tensor(gm, target, modules)), []).append(target)
    sliced: dict[tuple[str, int], torch.Tensor] = {}
    raw_kept = plan.class_kept[plan.channels.class_of]  # once, not per slot
    with torch.no_grad():
        for slot in plan.channels.slots:
            keep = raw_kept[slot.ids]
            if bool(keep.all()):
                continue
            index = keep.nonzero().flatten()
            tensor = get_tensor(gm, slot.target, modules)
            set_tensor(gm, slot.target, tensor.index_select(slot.dim, index), modules)
            sliced[(slot.target, slot.dim)] = index
    for names in names_of.values():
        for other in names[1:]:
            if dims_of[other] == dims_of[names[0]]:
                retie(gm, other, get_tensor(gm, names[0], modules))
    return sliced


def light_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` (any channel masks baked in) with modules of its own
    but its parameters and buffers shared, not copied: most are about to be
    replaced by slices, so copying them would only raise peak memory and
    time. Each module is copied shallowly with its own parameter, buffer and
    submodule tables (so setting an attribute or replacing a tensor in the
    copy leaves ``gm`` alone); the graph is copied with node metadata shared
    (read, never changed). Call :func:`own_tensors` before changing any
    tensor in place, and ``recompile()`` before running it (its code is
    generated once, after the rewrite)."""
    clones: dict[int, nn.Module] = {}

    def clone(module: nn.Module, cls: type | None = None) -> nn.Module:
        if id(module) not in clones:
            new = object.__new__(cls or type(module))
            clones[id(module)] = new
            state = new.__dict__
            state.update(module.__dict__)  # Module.__setattr__ bookkeeping is not needed here
            state["_parameters"] = dict(module._parameters)
            state["_buffers"] = dict(module._buffers)
            state["_modules"] = {k: None if m is None else clone(m) for k, m in module._modules.items()}
        return clones[id(module)]

    out = clone(gm, type(type(gm).__name__, (fx.GraphModule,), {}))  # a class of its own: its own forward
    graph = copy.deepcopy(gm.graph, {id(node.meta): dict(node.meta) for node in gm.graph.nodes})
    graph.owning_module = out
    out.__dict__.update(_graph=graph, meta={k: v for k, v in gm.meta.items() if k != COMPILE_KEY})
    bake(out)
    return out


def zero_dropped(gm: fx.GraphModule, masks: dict[str, torch.Tensor],
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


def own_tensors(gm: nn.Module, other: nn.Module) -> None:
    """Clone every parameter or buffer ``gm`` still shares with ``other`` (tied
    tensors stay tied), so training one never changes the other."""
    shared = {id(t) for t in chain(other.parameters(), other.buffers())}
    clones: dict[int, torch.Tensor] = {}
    for module in gm.modules():
        for table in (module._parameters, module._buffers):
            for name, tensor in table.items():
                if tensor is None or id(tensor) not in shared:
                    continue
                if id(tensor) not in clones:
                    clone = tensor.detach().clone()
                    if isinstance(tensor, nn.Parameter):
                        clone = nn.Parameter(clone, requires_grad=tensor.requires_grad)
                    clones[id(tensor)] = clone
                table[name] = clones[id(tensor)]


class RewritePass:
    name = "rewrite"
    requires = ("graph", "plan")
    provides = ("compact",)

    def __call__(self, state: CompileState) -> None:
        state.compact = self.build(state, state.plan)

    def build(self, state: CompileState, plan: PruningPlan) -> fx.GraphModule:
        """The compact model of the traced graph under ``plan`` (the budget
        search builds its candidates with this too)."""
        # The masked model's weights, sliced: it zeroes a layer's own dropped
        # filters even where the union keeps the channel, and so must the
        # compact model. Built from the traced graph, not from the masked
        # model, so that a masked model (parametrized, for training) need
        # not exist first.
        compact = light_copy(state.graph)
        modules = dict(compact.named_modules(remove_duplicate=False))
        kinds = None if state.config.mask_bn else FILTER_KINDS
        masks = keep_masks(compact, plan.channels, plan.raw_dropped, kinds)
        sliced = slice_parameters(compact, plan, modules)
        zero_dropped(compact, masks, sliced, modules)
        own_tensors(compact, state.graph)
        rw = RewriteContext(compact, plan)
        for node in list(compact.graph.nodes):
            rule = RULES.lookup(node, compact, modules) if node.op.startswith("call_") else None
            if rule is None or not hasattr(rule, "rewrite"):
                continue
            if node.name in plan.channels.unknown:
                continue  # pinned: nothing about it changes
            rule.rewrite(node, rw)
        compact.graph.lint()
        compact.recompile()
        return compact.eval()
