"""What a channel costs in time: a roofline model of the compact model's latency.

A conv or linear layer takes about ``FLOPs / P + bytes / W`` on a CPU, where
``P`` is the rate the runtime computes at and ``W`` the rate it moves memory
at (the layer's input and output activations and its weights). Both rates are
measured on ONNX Runtime, once per process and thread count
(:func:`measure_roofline`: one wide 1x1 conv, compute-bound; one large Add,
memory-bound). A layer whose time is mostly memory (a depthwise conv at high
resolution, a 1x1 conv with few channels) costs more time per FLOP than a
wide conv, so one of its channels saves more time than its FLOPs say.

:func:`latency_model` is a :class:`~graphprune.flops.FlopsModel` whose terms
are milliseconds. The time a channel's FLOPs cost (its ``marginal`` time over
its ``marginal`` FLOPs, relative to the median) is what ``trade_flops``
divides scores by (:func:`latency_order`, :mod:`graphprune.budget.trade`), so
at equal score a channel of a memory-bound layer is dropped first. Only the
order changes: a FLOPs target is met as before, and every latency candidate
is still exported and timed.
"""

from __future__ import annotations

import functools
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.fx as fx

from ..flops import CONV_MODULES, FlopsModel, Part, _shape, shape_flops
from ..tensors import get_tensor

if TYPE_CHECKING:
    from ..pipeline import CompileState

FLOAT_BYTES = 4


@dataclass(frozen=True)
class Roofline:
    """What the runtime computes and moves per millisecond, measured here."""

    flops_per_ms: float
    bytes_per_ms: float
    threads: int | None

    def __str__(self) -> str:
        return (f"{self.flops_per_ms / 1e6:.1f} GFLOP/s, {self.bytes_per_ms / 1e6:.1f} GB/s "
                f"(ONNX Runtime CPU, {self.threads or 'default'} threads)")


def _timed_ms(model_bytes: bytes, feed: dict[str, np.ndarray], threads: int | None) -> float:
    from ..onnx_latency import measure_latency, open_session

    with tempfile.TemporaryDirectory(prefix="graphprune-roofline-") as tmp:
        path = Path(tmp) / "probe.onnx"
        path.write_bytes(model_bytes)
        session = open_session(path, threads=threads)
        return measure_latency(session, feed, warmup=3, runs=15).median_ms


@functools.cache
def measure_roofline(threads: int | None = None) -> Roofline:
    """P from a 512 -> 512 1x1 conv at 28x28 (411 MFLOPs), W from an Add of two 256x56x56 tensors (9.6 MB moved)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def model(nodes: list, inputs: list, outputs: list, weights: list) -> bytes:
        graph = helper.make_graph(nodes, "probe", inputs, outputs, weights)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    def tensor(name: str, shape: list[int]):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    c, hw = 512, 28
    weight = numpy_helper.from_array(rng.standard_normal((c, c, 1, 1), dtype=np.float32) * 0.05, "w")
    conv = model([helper.make_node("Conv", ["x", "w"], ["y"])], [tensor("x", [1, c, hw, hw])],
                 [tensor("y", [1, c, hw, hw])], [weight])
    conv_ms = _timed_ms(conv, {"x": rng.standard_normal((1, c, hw, hw), dtype=np.float32)}, threads)
    shape = [1, 256, 56, 56]
    add = model([helper.make_node("Add", ["a", "b"], ["y"])], [tensor("a", shape), tensor("b", shape)],
                [tensor("y", shape)], [])
    feed = {k: rng.standard_normal(shape, dtype=np.float32) for k in ("a", "b")}
    add_ms = _timed_ms(add, feed, threads)
    moved = 3 * FLOAT_BYTES * math.prod(shape)
    conv_bytes = FLOAT_BYTES * (2 * c * hw * hw + c * c)
    bytes_per_ms = moved / max(add_ms, 1e-6)
    compute_ms = max(conv_ms - conv_bytes / bytes_per_ms, conv_ms * 0.1)
    return Roofline(2 * c * c * hw * hw / compute_ms, bytes_per_ms, threads)


def _activation_slots(node: fx.Node, gm: fx.GraphModule, weight: str, slot_at: dict[tuple[str, int], int]
                      ) -> tuple[int | None, int | None]:
    """The slots (of ``weight``) that scale a layer's input and output channels."""
    module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None
    tensor = get_tensor(gm, weight)
    if isinstance(module, CONV_MODULES):
        transposed = bool(module.transposed)
    else:  # a function (the export frontend's aten.conv_transpose2d)
        transposed = node.op == "call_function" and "transpose" in getattr(node.target, "__name__", "")
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    out_slot, in_slot = slot_at.get((weight, out_dim)), slot_at.get((weight, in_dim))
    if tensor.ndim > 2 and tensor.shape[in_dim] == 1 and in_slot is None:
        in_slot = out_slot  # depthwise: one input channel per output channel
    return in_slot, out_slot


def latency_terms(gm: fx.GraphModule, state: CompileState, roofline: Roofline
                  ) -> tuple[list[tuple[float, list[int]]], float] | None:
    """Per conv and linear layer, its compute (FLOPs / P, scaled by its weight's
    slots) and the memory it moves (input, output and weight bytes / W, each
    scaled by its own slots); None where the graph has matrix products without
    a formula (attention: its FLOPs are counted by running, not from shapes)."""
    per_node: dict[fx.Node, int | list[Part]] | None = shape_flops(gm)
    if per_node is None:
        return None
    channels = state.channels
    slots_of = FlopsModel.slots_of(channels)
    slot_at = {(slot.target, slot.dim): i for i, slot in enumerate(channels.slots)}
    terms: list[tuple[float, list[int]]] = []
    fixed = 0.0
    for node, count in per_node.items():
        if isinstance(count, list):  # an attention layer's parts: their compute, as the FLOPs model scales it
            for part, dims in count:
                scaled = [slot_at[d] for d in dims if d in slot_at]
                terms.append((part / roofline.flops_per_ms, scaled))
            continue
        weight = FlopsModel.weight_of(gm, node, slots_of)
        if weight is None:
            fixed += count / roofline.flops_per_ms
            continue
        terms.append((count / roofline.flops_per_ms, slots_of[weight]))
        terms.append((FLOAT_BYTES * get_tensor(gm, weight).numel() / roofline.bytes_per_ms, slots_of[weight]))
        in_slot, out_slot = _activation_slots(node, gm, weight, slot_at)
        for shape, slot in ((_shape(node.args[0]), in_slot), (_shape(node), out_slot)):
            moved = FLOAT_BYTES * math.prod(shape) / roofline.bytes_per_ms if shape is not None else 0.0
            if slot is None:
                fixed += moved
            else:
                terms.append((moved, [slot]))
    return terms, fixed


def latency_model(state: CompileState, threads: int | None) -> tuple[FlopsModel, Roofline] | None:
    """The roofline model of ``state.graph``'s layers, in milliseconds (None where it has no formula)."""
    roofline = measure_roofline(threads)
    found = latency_terms(state.graph, state, roofline)
    if found is None:
        return None
    terms, fixed = found
    dense = fixed + sum(t for t, _ in terms)
    return FlopsModel.of_terms(state.channels, terms, fixed, dense), roofline


def latency_order(order: torch.Tensor, scores: torch.Tensor, model: FlopsModel, flops: FlopsModel,
                  at: torch.Tensor) -> torch.Tensor:
    """``order`` (classes, first to drop first) re-ranked for latency: each
    class's score divided by the time its channel saves per FLOP it saves at
    ``at`` (relative to the median over ``order``), so at equal score the
    channel of a memory-bound layer goes first. The factor only moves FLOPs
    between layers of different speed: it does not weigh a channel by how
    many FLOPs it has (scores normalised per group are not comparable in
    that way: a ranking by time saved alone empties the early, wide-image
    layers first)."""
    if not order.numel():
        return order
    saved_ms, saved_flops = model.marginal(at)[order], flops.marginal(at)[order]
    per_flop = torch.where(saved_flops > 0, saved_ms / saved_flops.clamp_min(1e-30), torch.nan)
    typical = per_flop.nanmedian()
    if not bool(torch.isfinite(typical)) or float(typical) <= 0:
        return order
    relative = torch.nan_to_num(per_flop / typical, nan=1.0).clamp(0.1, 10.0)
    return order[torch.argsort(scores[order] / relative, stable=True)]


def importance_kept(scores: torch.Tensor, order: torch.Tensor, class_kept: torch.Tensor) -> float:
    """Of the ranked classes' summed score, the share ``class_kept`` keeps."""
    total = float(scores[order].sum())
    return float(scores[order][class_kept[order]].sum()) / total if total > 0 else 1.0

