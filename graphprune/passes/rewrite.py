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


def slice_parameters(gm: fx.GraphModule, plan: PruningPlan) -> None:
    # Names of one tensor (tied weights) get one sliced tensor back, still tied.
    names_of: dict[int, list[str]] = {}
    dims_of: dict[str, set[int]] = {}
    for slot in plan.channels.slots:
        dims_of.setdefault(slot.target, set()).add(slot.dim)
    for target in dims_of:
        names_of.setdefault(id(get_tensor(gm, target)), []).append(target)
    with torch.no_grad():
        for slot in plan.channels.slots:
            keep = plan.kept(slot.ids)
            if bool(keep.all()):
                continue
            tensor = get_tensor(gm, slot.target)
            set_tensor(gm, slot.target, tensor.index_select(slot.dim, keep.nonzero().flatten()))
    for names in names_of.values():
        for other in names[1:]:
            if dims_of[other] == dims_of[names[0]]:
                retie(gm, other, get_tensor(gm, names[0]))


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
    """A copy of ``gm`` (any channel masks baked in) that shares, not copies,
    its parameters and buffers: most are about to be replaced by slices, so
    a full copy would only raise peak memory. Call :func:`own_tensors`
    before changing any tensor in place."""
    memo: dict[int, Any] = {id(t): t for t in chain(gm.parameters(), gm.buffers())}
    record = gm.meta.get(COMPILE_KEY)
    if record is not None:
        memo[id(record)] = record
    out = copy.deepcopy(gm, memo)
    out.meta.pop(COMPILE_KEY, None)
    bake(out)
    return out


def zero_dropped(gm: fx.GraphModule, masks: dict[str, torch.Tensor]) -> None:
    """Multiply the masks into their tensors, out of place (the tensors may be
    shared with the caller's model)."""
    with torch.no_grad():
        for target, keep in masks.items():
            set_tensor(gm, target, get_tensor(gm, target) * keep)


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
        kinds = None if state.config.mask_bn else FILTER_KINDS
        zero_dropped(compact, keep_masks(compact, state.channels, state.plan.raw_dropped, kinds))
        slice_parameters(compact, state.plan)
        own_tensors(compact, state.graph)
        rw = RewriteContext(compact, state.plan)
        for node in list(compact.graph.nodes):
            rule = RULES.lookup(node, compact) if node.op.startswith("call_") else None
            if rule is None or not hasattr(rule, "rewrite"):
                continue
            if state.channels.rule_names.get(node.name) == "unknown":
                continue  # pinned: nothing about it changes
            rule.rewrite(node, rw)
        compact.graph.lint()
        compact.recompile()
        state.compact = compact.eval()
