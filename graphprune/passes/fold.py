"""Fold pass: without BN masking, fold the constants of dropped channels into
the biases of the layers that read them, where that is exact.

With ``mask_bn=False`` the masked model zeroes only the filters of dropped
channels, so a dropped channel leaves its BatchNorm (or conv bias) as a
constant ``beta - gamma * mean / sqrt(var + eps)``, maybe changed by the
activation after it. Removing the channel would lose that constant (the
paper's 3-37 points of accuracy). But a constant input channel adds a fixed
amount to every output of a linear layer, a 1x1 conv, an unpadded conv, or a
linear layer after global pooling: the layer's bias can absorb it exactly.

How, without a table of layer kinds: the masked model is run on the example
inputs and a random batch, and the input of every conv or linear that loses
channels is recorded. A dropped channel is a constant if it takes one value
everywhere (every sample, every position). The layer itself is then run on a
probe input holding only those constants; the difference from its output on
zeros is what the constants contribute. If that contribution is the same at
every output position, it folds into the bias exactly. If not (a padded k x k
conv sees the constant only inside the image, not on the zero padding), the
interior value is folded and the channels are reported as not exact; so are
dropped channels that vary with the input (a constant times a kept signal).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .. import ids
from ..numerics import fresh_copy, input_batches
from ..pipeline import CompileState
from ..plan import BiasFold, PruningPlan
from ..slicing import masked_graph
from ..tensors import get_tensor, owner_of


@dataclass
class _InputStats:
    """Per channel position of a consumer's input, over every batch seen."""

    low: torch.Tensor
    high: torch.Tensor
    total: torch.Tensor
    count: int  # values summed into each position
    shape: tuple[int, ...]  # of one batch


@dataclass
class _Consumer:
    node: fx.Node
    weight: str
    bias: str | None | bool  # False: a computed bias that cannot absorb a fold
    dropped: torch.Tensor  # bool, shaped like the input's channel code
    code: torch.Tensor
    stats: _InputStats | None = None
    call: Any = None  # runs the layer on another input


def _weight_of(node: fx.Node, gm: fx.GraphModule) -> tuple[str, Any] | None:
    """The layer's weight name and bias (name, None, or False if computed)."""
    if node.op == "call_module":
        module = gm.get_submodule(str(node.target))
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            return None
        bias = f"{node.target}.bias" if getattr(module, "bias", None) is not None else None
        return f"{node.target}.weight", bias
    if node.op == "call_function" and len(node.args) > 1:
        weight = node.args[1]
        if isinstance(weight, fx.Node) and weight.op == "get_attr":
            bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
            if bias is None:
                return str(weight.target), None
            if isinstance(bias, fx.Node) and bias.op == "get_attr":
                return str(weight.target), str(bias.target)
            return str(weight.target), False
    return None


def _consumers(state: CompileState, masked: fx.GraphModule) -> list[_Consumer]:
    channels, plan = state.channels, state.plan
    inputs = {slot.target: slot for slot in channels.slots if slot.kind == "input"}
    found = []
    for node in masked.graph.nodes:
        if node.op not in ("call_module", "call_function") or not node.args:
            continue
        weight = _weight_of(node, masked)
        if weight is None or weight[0] not in inputs or not bool((~plan.kept(inputs[weight[0]].ids)).any()):
            continue
        x = node.args[0]
        code = channels.codes.get(x.name) if isinstance(x, fx.Node) else None
        if not isinstance(code, torch.Tensor):
            continue
        dropped = ~plan.class_kept[channels.class_of[ids.raw_ids(code)]]
        if bool(dropped.any()):
            found.append(_Consumer(node, weight[0], weight[1], dropped, code))
    return found


class _Recorder(fx.Interpreter):
    """Runs the masked model, keeping per-channel min, max and sum of each
    consumer's input (reduced over the dims its channel code broadcasts), and
    a way to run the consumer again."""

    def __init__(self, gm: fx.GraphModule, consumers: list[_Consumer]):
        super().__init__(gm)
        self.by_name = {c.node.name: c for c in consumers}

    def run_node(self, n: fx.Node) -> Any:
        consumer = self.by_name.get(n.name)
        if consumer is None:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        x = args[0]
        dims = [d for d in range(x.ndim) if consumer.code.shape[d] == 1]
        low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
        total, count = x.sum(dim=dims, keepdim=True), x.numel() // max(1, high.numel())
        s = consumer.stats
        if s is not None:
            low, high = torch.minimum(low, s.low), torch.maximum(high, s.high)
            total, count = total + s.total, count + s.count
        consumer.stats = _InputStats(low, high, total, count, tuple(x.shape))
        if consumer.call is None:
            rest, target = args[1:], n.target
            if n.op == "call_module":
                module = self.module.get_submodule(str(target))
                consumer.call = lambda probe: module(probe, *rest, **kwargs)
            else:
                consumer.call = lambda probe: target(probe, *rest, **kwargs)
        return getattr(self, n.op)(n.target, args, kwargs)


VARYING = "dropped channels that vary with the input (a constant times a kept signal, or pooled with padding), which cannot be folded"
BORDER = ("constant dropped channels seen through a padded or strided window, which sees them only inside "
          "the border: the fold is exact away from the border only")
SHARED = "constant dropped channels of a layer called more than once with different constants, which share one bias"
COMPUTED = "constant dropped channels of a layer whose bias is computed in the graph, so there is nothing to fold into"


def _contribution(consumer: _Consumer, weight_ndim: int) -> tuple[torch.Tensor, bool, str | None, list[int]]:
    """What the constant dropped channels add per output channel, whether that
    is exact, and why not."""
    s = consumer.stats
    mean = s.total / s.count
    spread = s.high - s.low
    constant = spread <= 1e-5 * mean.abs() + 1e-8
    varying = consumer.dropped & ~constant
    value = torch.where(consumer.dropped & constant, mean, torch.zeros_like(mean))
    shape = [1, *s.shape[1:]]
    probe = value.expand(shape).contiguous()
    out_dim = -1 if weight_ndim == 2 else 1
    with torch.no_grad():
        delta = consumer.call(probe) - consumer.call(torch.zeros_like(probe))
    per_out = delta.movedim(out_dim, 0).reshape(delta.shape[out_dim], -1)
    width = per_out.amax(1) - per_out.amin(1)
    uniform = bool((width <= 1e-5 * per_out.abs().amax(1) + 1e-7).all())
    centre = [size // 2 for size in delta.shape]
    centre[out_dim] = slice(None)
    vec = delta[tuple(centre)].reshape(-1)
    if bool(varying.any()):
        return vec, False, VARYING, positions(varying)
    if not uniform:
        return vec, False, BORDER, positions(consumer.dropped)
    return vec, True, None, []


def positions(which: torch.Tensor) -> list[int]:
    return which.reshape(-1).nonzero().flatten().tolist()


def summary(folds: list[BiasFold]) -> list[str]:
    """One note per reason a fold is not exact, naming the layers and channels."""
    notes = []
    for why in (VARYING, BORDER, SHARED, COMPUTED):
        hit = [f for f in folds if f.why == why]
        if not hit:
            continue
        named = "; ".join(
            f"{f.node} (inputs {', '.join(map(str, f.channels[:6]))}{', ...' if len(f.channels) > 6 else ''})"
            for f in hit[:4]
        ) + (f"; and {len(hit) - 4} more layers" if len(hit) > 4 else "")
        notes.append(f"not exact without BN masking: {len(hit)} layers read {why}: {named}")
    return notes


def fold_deltas(plan: PruningPlan, folds: list[BiasFold]) -> list[torch.Tensor]:
    """Each fold's contribution per output channel the compact layer keeps."""
    filters = {slot.target: slot for slot in plan.channels.slots if slot.kind == "filter"}
    out = []
    for fold in folds:
        slot = filters.get(fold.weight)
        out.append(fold.delta if slot is None else fold.delta[plan.kept(slot.ids)])
    return out


def apply_folds_to_model(model: nn.Module, plan: PruningPlan, folds: list[BiasFold]) -> list[str]:
    """The same folds on the user's model: into the layer's bias, or a new one
    where the layer has a ``bias`` slot left empty; returns the layers that
    have neither (their folds stay in the graph form only)."""
    missing = []
    with torch.no_grad():
        for fold, delta in zip(folds, fold_deltas(plan, folds)):
            if fold.bias is not None:
                bias = get_tensor(model, fold.bias)
                bias.add_(delta.to(bias.dtype))
                continue
            module = model.get_submodule(owner_of(fold.weight))
            if "bias" in module._parameters and module._parameters["bias"] is None:
                module.bias = nn.Parameter(delta.detach().clone())
            else:
                missing.append(owner_of(fold.weight))
    return missing


def apply_folds(gm: fx.GraphModule, plan: PruningPlan, folds: list[BiasFold]) -> None:
    """Add what each layer's dropped constant inputs contributed to its bias
    (see the fold pass), giving the layer a bias if it had none."""
    nodes = {n.name: n for n in gm.graph.nodes}
    for fold, delta in zip(folds, fold_deltas(plan, folds)):
        with torch.no_grad():
            if fold.bias is not None:
                get_tensor(gm, fold.bias).add_(delta.to(get_tensor(gm, fold.bias).dtype))
                continue
            node = nodes[fold.node]
            bias = nn.Parameter(delta.detach().clone())
            if node.op == "call_module":
                gm.get_submodule(str(node.target)).bias = bias
                continue
            name = f"{node.name}_folded_bias"
            gm.register_parameter(name, bias)
            with gm.graph.inserting_before(node):
                attr = gm.graph.get_attr(name)
            if len(node.args) > 2:
                node.args = node.args[:2] + (attr,) + node.args[3:]
            else:
                node.kwargs = {**node.kwargs, "bias": attr}


class FoldPass:
    name = "fold"
    requires = ("graph", "plan", "compact_graph")
    provides = ("folds",)
    random_batches = 1

    def __call__(self, state: CompileState) -> None:
        state.folds = []
        config = state.config
        if config.mask_bn:
            return
        if not config.fold_constants:
            state.notes.append("mask_bn=False and fold_constants=False: the constants of dropped channels "
                               "are dropped with them, so the compact model is NOT the masked one (the "
                               "paper's 'without BN masking' ablation)")
            return
        masked = masked_graph(state.graph, state.plan, mask_bn=False)
        consumers = _consumers(state, masked)
        if not consumers:
            return
        recorder = _Recorder(masked, consumers)
        with torch.no_grad():
            for batch in input_batches(state.example_inputs, config.seed + 1, self.random_batches):
                recorder.run(*fresh_copy(batch))
        by_weight: dict[str, list[BiasFold]] = {}
        for consumer in consumers:
            weight_ndim = get_tensor(masked, consumer.weight).ndim
            delta, exact, why, channels = _contribution(consumer, weight_ndim)
            if consumer.bias is False and bool(delta.ne(0).any()):
                exact, why, channels = False, COMPUTED, positions(consumer.dropped)
            fold = BiasFold(consumer.node.name, consumer.weight, consumer.bias or None,
                            -1 if weight_ndim == 2 else 1, delta, exact, why, channels)
            by_weight.setdefault(consumer.weight, []).append(fold)
        inexact = []
        for folds in by_weight.values():
            if len(folds) > 1 and not all(torch.allclose(f.delta, folds[0].delta) for f in folds):
                for f in folds:
                    f.exact, f.why, f.channels = False, SHARED, f.channels or positions(f.delta.ne(0))
            inexact += [f for f in folds if not f.exact]
            if bool(folds[0].delta.ne(0).any()) and folds[0].why != COMPUTED:
                state.folds.append(folds[0])
        state.notes.extend(summary(inexact))
        if state.folds:
            state.notes.append(f"folded the constants of dropped channels into the biases of {len(state.folds)} "
                               f"layers ({sum(f.exact for f in state.folds)} exactly)")
        apply_folds(state.compact_graph, state.plan, state.folds)
        state.compact_graph.graph.lint()
        state.compact_graph.recompile()
        if state.compact is not None:
            missing = apply_folds_to_model(state.compact, state.plan, state.folds)
            if missing:
                state.notes.append(f"not exact without BN masking: {', '.join(missing[:4])} compute their bias "
                                   "in forward, so the folded constants are in the compact graph only")
