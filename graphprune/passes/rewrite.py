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
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .. import ids
from ..analysis import ChannelGraph
from ..pipeline import CompileState
from ..plan import PruningPlan
from ..rules import RULES
from ..rules.base import TensorMeta, value
from ..tensors import get_tensor, set_tensor
from .mask import COMPILE_KEY, FILTER_KINDS, bake, keep_masks


class RewriteContext:
    """What a rule's ``rewrite`` may ask about the compact graph."""

    def __init__(self, gm: fx.GraphModule, plan: PruningPlan):
        self.gm = gm
        self.plan = plan
        self.analysis: ChannelGraph = plan.channels

    def kept(self, code: torch.Tensor) -> torch.Tensor:
        return self.plan.class_kept[self.analysis.class_of[ids.raw_ids(code)]]

    def _along(self, code: torch.Tensor, dim: int) -> torch.Tensor:
        keep = self.kept(code)
        others = tuple(d for d in range(keep.ndim) if d != dim)
        return keep.any(dim=others) if others else keep

    def compact_size(self, code: torch.Tensor, shape: Any, dim: int) -> int:
        dim = dim % len(shape)
        if code.shape[dim] == 1:
            return int(shape[dim])
        return int(self._along(code, dim).sum())

    def compact_shape(self, node: fx.Node) -> list[int] | None:
        code, meta = self.analysis.codes.get(node.name), value(node)
        if not isinstance(code, torch.Tensor) or not isinstance(meta, TensorMeta):
            return None
        return [self.compact_size(code, meta.shape, d) for d in range(meta.ndim)]

    def kept_prefix(self, node: fx.Node, dim: int) -> torch.Tensor | None:
        """Kept positions before each index along ``dim`` of ``node``'s output
        (length size + 1), or None where nothing along ``dim`` is dropped."""
        code = self.analysis.codes.get(node.name)
        if not isinstance(code, torch.Tensor) or code.shape[dim % code.ndim] == 1:
            return None
        along = self._along(code, dim % code.ndim)
        return torch.cat([torch.zeros(1, dtype=torch.int64), along.cumsum(0)])


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


def retie(gm: fx.GraphModule, target: str, tensor: torch.Tensor) -> None:
    owner, _, attr = target.rpartition(".")
    module = gm.get_submodule(owner)
    if attr in module._parameters:
        module._parameters[attr] = tensor
    elif attr in module._buffers:
        module._buffers[attr] = tensor
    else:
        setattr(module, attr, tensor)


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
        # The masked model's weights, sliced: it zeroes a layer's own dropped
        # filters even where the union keeps the channel, and so must the
        # compact model. Built from the traced graph, not from the masked
        # model, so that a masked model (parametrized, for training) need
        # not exist first.
        compact = light_copy(state.graph)
        modules = dict(compact.named_modules(remove_duplicate=False))
        kinds = None if state.config.mask_bn else FILTER_KINDS
        masks = keep_masks(compact, state.channels, state.plan.raw_dropped, kinds)
        sliced = slice_parameters(compact, state.plan, modules)
        zero_dropped(compact, masks, sliced, modules)
        own_tensors(compact, state.graph)
        rw = RewriteContext(compact, state.plan)
        for node in list(compact.graph.nodes):
            rule = RULES.lookup(node, compact, modules) if node.op.startswith("call_") else None
            if rule is None or not hasattr(rule, "rewrite"):
                continue
            if state.channels.rule_names.get(node.name) == "unknown":
                continue  # pinned: nothing about it changes
            rule.rewrite(node, rw)
        compact.graph.lint()
        compact.recompile()
        state.compact = compact.eval()
