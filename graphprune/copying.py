"""Copies of models that share what they can: the compiler copies the
user's model several times (to trace, to slice, to mask), and copying every
weight each time would cost the model's size in memory and much of the time.

- :func:`private_copy`: modules, buffers and attributes of its own, the
  caller's parameters (the trace pass works on one);
- :func:`owned_copy`: a private copy with every tensor its own (what the user
  gets back: the compact and masked models);
- :func:`light_copy`: a GraphModule whose modules have tables of their own
  but share every tensor and attribute (the rewrite slices one);
- :func:`own_tensors`: clone the tensors a copy still shares with another model;
- :func:`fingerprint`: what a later copy checks to know the model is as it was;
- :class:`LazyGraphModule`: the GraphModule class whose code is generated when
  first needed (run, printed, pickled), not when built: most graphs a compile
  builds are read or rewritten, not run.
"""

from __future__ import annotations

import copy
from itertools import chain
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

try:  # torch's own lazy GraphModule (what torch.compile builds its graphs with)
    from torch.fx._lazy_graph_module import _LazyGraphModule
except ImportError:  # pragma: no cover - a torch without it generates code at once
    _LazyGraphModule = fx.GraphModule


class LazyGraphModule(_LazyGraphModule):
    """A GraphModule whose code is generated on first use; torch.jit.script,
    which cannot script one, gets a plain GraphModule of it."""

    def __prepare_scriptable__(self) -> fx.GraphModule:
        return fx.GraphModule(self, self.graph, type(self).__name__)


def private_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose modules, attributes and buffers are its own,
    but whose parameters are the caller's tensors.

    Modules, their training flags and every other attribute are copied, so
    ``eval()``, a frontend that switches a head to dynamic shapes, or a
    forward that updates a buffer leave the caller's model alone. Parameter
    tensors are shared (tied parameters stay tied): graphprune reads them and
    never writes them (masking and slicing happen in copies)."""
    memo: dict[int, Any] = {id(p): p for _, p in model.named_parameters(remove_duplicate=False)}

    def clone(module: nn.Module) -> nn.Module:
        # copy.deepcopy of every module object is slow (most of a small
        # model's compile); plain attributes and empty hook tables need none.
        if id(module) in memo:
            return memo[id(module)]
        new = object.__new__(type(module))
        memo[id(module)] = new
        state = new.__dict__
        for key, value in module.__dict__.items():
            if key == "_modules":
                state[key] = {k: None if m is None else clone(m) for k, m in value.items()}
            elif key == "_parameters":
                state[key] = dict(value)
            elif key == "_buffers":
                state[key] = {k: _own_buffer(t, memo) for k, t in value.items()}
            elif _immutable(value):
                state[key] = value
            elif isinstance(value, dict) and not value:
                state[key] = type(value)()
            elif isinstance(value, nn.Module):
                state[key] = clone(value)
            else:
                state[key] = copy.deepcopy(value, memo)
        return new

    return clone(model)


def _own_buffer(tensor: torch.Tensor | None, memo: dict[int, Any]) -> torch.Tensor | None:
    """A buffer's copy (tied buffers stay tied): a plain clone where deepcopy's
    generic path would cost most of the copy (BatchNorm's three buffers per layer)."""
    if tensor is None or type(tensor) is not torch.Tensor:
        return copy.deepcopy(tensor, memo)
    if id(tensor) not in memo:
        memo[id(tensor)] = tensor.detach().clone().requires_grad_(tensor.requires_grad)
    return memo[id(tensor)]


IMMUTABLE = (int, float, bool, str, bytes, type(None), torch.dtype, torch.device, torch.Size, type)


def _immutable(value: Any) -> bool:
    return isinstance(value, IMMUTABLE) or (type(value) is tuple and all(_immutable(v) for v in value))


def owned_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with modules, attributes and tensors of its own (tied tensors stay tied)."""
    out = private_copy(model)
    own_tensors(out, model)
    return out


def light_copy(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` with modules of its own
    but its parameters and buffers shared, not copied: most are about to be
    replaced by slices, so copying them would only raise peak memory and
    time. Each module is copied shallowly with its own parameter, buffer and
    submodule tables (so setting an attribute or replacing a tensor in the
    copy leaves ``gm`` alone); the graph is copied with node metadata shared
    (read, never changed). Call :func:`own_tensors` before changing any
    tensor in place, and ``recompile()`` once its graph is changed (its code
    is generated when first run)."""
    clones: dict[int, nn.Module] = {}

    def clone(module: nn.Module, new: nn.Module | None = None) -> nn.Module:
        if id(module) not in clones:
            new = object.__new__(type(module)) if new is None else new
            clones[id(module)] = new
            state = new.__dict__
            state.update(module.__dict__)  # Module.__setattr__ bookkeeping is not needed here
            state["_parameters"] = dict(module._parameters)
            state["_buffers"] = dict(module._buffers)
            state["_modules"] = {k: None if m is None else clone(m) for k, m in module._modules.items()}
        return clones[id(module)]

    # GraphModule.__new__ gives each instance a class of its own (recompile sets the forward on it)
    out = clone(gm, fx.GraphModule.__new__(LazyGraphModule))
    type(out).__name__ = type(gm).__name__
    graph = copy.deepcopy(gm.graph, {id(node.meta): dict(node.meta) for node in gm.graph.nodes})
    graph.owning_module = out
    out.__dict__.update(_graph=graph, meta=dict(gm.meta))
    return out


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


def fingerprint(model: nn.Module, *tensors: Any) -> tuple:
    """The identity of ``model`` as it is now: its module tree and, per
    parameter and buffer (and each tensor of ``tensors``), the tensor object,
    its storage, shape and version counter. Training, ``load_state_dict``, an
    in-place edit or a replaced module changes it; running in eval mode does not."""
    def tensor(t: Any) -> Any:
        if not isinstance(t, torch.Tensor):
            return None
        try:
            storage = t.data_ptr()
        except RuntimeError:  # a tensor without one storage (sparse): its identity and version say enough
            storage = None
        return id(t), storage, tuple(t.shape), t._version

    return (
        tuple((name, id(m)) for name, m in model.named_modules(remove_duplicate=False)),
        tuple((name, tensor(t)) for name, t in chain(model.named_parameters(remove_duplicate=False),
                                                    model.named_buffers(remove_duplicate=False))),
        tuple(tensor(t) for t in tensors),
    )
