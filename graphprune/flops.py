"""FLOPs: counted by ``torch.utils.flop_counter`` on a real run, and
predicted for any choice of kept channels without building the compact model.

:func:`count_flops` is what the measure pass reports. :class:`FlopsModel` is
what the budget search costs its candidates with. A conv's or linear's FLOPs
are proportional to the number of elements of its weight (the counter counts
``2 * batch * weight.numel() * output positions``), and the rewrite slices
each weight dimension to the kept channels of its slot, so a node's compact
FLOPs are its dense FLOPs times the kept fraction of every channel-indexed
dimension of its weight. That covers depthwise and grouped convs too (their
weight dims are slotted per channel and per group position). FLOPs no weight
scales (a matmul of two activations) are held constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

from .analysis import ChannelGraph
from .numerics import fresh_copy
from .tensors import get_tensor


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cpu_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter() -> FlopCounterMode:
    """``torch.utils.flop_counter``'s counter, which also counts
    ``F.scaled_dot_product_attention`` on the CPU (it has the formula only for
    the GPU kernels, and counted the CPU's as 0)."""
    cpu = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return FlopCounterMode(display=False, custom_mapping={cpu: _cpu_attention_flops} if cpu is not None else {})


def count_flops(model: nn.Module, example_inputs: tuple) -> int:
    """FLOPs of one forward pass of ``model`` on the inputs (2 per multiply-accumulate).

    ``nn.MultiheadAttention`` takes a fused inference kernel without autograd,
    which the counter does not see; with one in the model the forward runs
    with autograd on (its weights requiring grad), so its products are counted."""
    attention = any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    counter = flop_counter()
    with torch.set_grad_enabled(attention), counter:
        model(*fresh_copy(example_inputs))
    return int(counter.get_total_flops())


class _NodeFlops(fx.Interpreter):
    """Runs the graph once under one FlopCounterMode, noting what each node adds."""

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode):
        super().__init__(gm)
        self.counter = counter
        self.flops: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops()
        result = super().run_node(n)
        added = self.counter.get_total_flops() - before
        if added:
            self.flops[n] = added
        return result


CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: calls that count FLOPs (matrix products) but that shape_flops has no formula for: count those by running
MATMUL_NAMES = {"matmul", "mm", "bmm", "addmm", "baddbmm", "addbmm", "einsum", "scaled_dot_product_attention",
                "linear", "bilinear", "conv_tbc", "tensordot", "inner", "outer", "mv", "dot", "addmv", "chain_matmul",
                "convolution", "_convolution", "convolution_backward"}


def _shape(node: Any) -> list[int] | None:
    meta = node.meta.get("graphprune.value") if isinstance(node, fx.Node) else None
    return list(meta.shape) if hasattr(meta, "shape") else None


def _conv_or_linear(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[str, list[int], bool] | None:
    """("conv" or "linear", weight shape, transposed) of a conv or linear call, whatever its form."""
    if node.op == "call_module":
        module = modules.get(str(node.target))
        if isinstance(module, CONV_MODULES):
            return "conv", list(module.weight.shape), bool(module.transposed)
        if isinstance(module, nn.Linear):
            return "linear", list(module.weight.shape), False
        return None
    if node.op != "call_function" or len(node.args) < 2 or _shape(node.args[1]) is None:
        return None
    name = getattr(node.target, "__name__", "").split(".")[0]
    if name in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"):
        return "conv", _shape(node.args[1]), "transpose" in name
    if name == "linear":
        return "linear", _shape(node.args[1]), False
    return None


#: one part of a node's FLOPs and the weight dims (qualified name, dim) whose kept fraction scales it
Part = tuple[int, tuple[tuple[str, int], ...]]


def attention_parts(node: fx.Node, layer: nn.MultiheadAttention) -> list[Part] | None:
    """The FLOPs of an ``nn.MultiheadAttention`` used as self-attention (what
    the counter counts where the module does not take its fused inference
    kernel, which the counter does not see): the input projection (scaled by
    the heads' rows and the model dim's columns), the scores and the weighted
    sum (by the heads' rows: whole heads), the output projection."""
    x = _shape(node.args[0]) if node.args else None
    if x is None or len(x) != 3 or layer.in_proj_weight is None or not layer._qkv_same_embed_dim:
        return None
    length, batch = (x[1], x[0]) if layer.batch_first else (x[0], x[1])
    tokens, inner = batch * length, layer.embed_dim
    path = str(node.target)
    rows, out = (f"{path}.in_proj_weight", 0), (f"{path}.out_proj.weight", 0)
    return [
        (2 * tokens * x[2] * 3 * inner, (rows, (rows[0], 1))),
        (2 * 2 * batch * length * length * inner, (rows,)),
        (2 * tokens * inner * layer.out_proj.out_features, (out, (out[0], 1))),
    ]


def shape_flops(gm: fx.GraphModule) -> dict[fx.Node, int | list[Part]] | None:
    """Each node's FLOPs, as ``torch.utils.flop_counter`` counts them, from the
    shapes the shape pass recorded (no run; an attention layer's as its
    parts); None where the graph holds a matrix product this has no formula for."""
    modules = dict(gm.named_modules(remove_duplicate=False))
    flops: dict[fx.Node, int | list[Part]] = {}
    for node in gm.graph.nodes:
        if not node.op.startswith("call_"):
            continue
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(module, nn.MultiheadAttention):
            parts = attention_parts(node, module)
            if parts is None:
                return None
            flops[node] = parts
            continue
        layer = _conv_or_linear(node, modules)
        x, out = (_shape(node.args[0]) if node.args else None), _shape(node)
        if layer is not None and x is not None and out is not None:
            kind, w, transposed = layer
            if kind == "conv":
                flops[node] = int(conv_flop_count(x, w, out, transposed))
            else:
                flops[node] = 2 * math.prod(out[:-1]) * w[0] * w[1]
            continue
        if node.op == "call_module":
            if module is None or any(p.ndim >= 2 for p in module.parameters()):
                return None  # a layer with matrices (attention, a recurrent cell): count by running
        elif str(getattr(node.target, "__name__", node.target)).split(".")[0] in MATMUL_NAMES:
            return None
    return flops


def _tensors_read(gm: fx.GraphModule, node: fx.Node) -> list[str]:
    """Qualified names of the parameters and buffers a node reads."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        prefix = f"{node.target}." if node.target else ""
        named = list(module.named_parameters()) + list(module.named_buffers())
        return [prefix + name for name, _ in named]
    leaves = tree_leaves((node.args, node.kwargs))
    return [str(a.target) for a in leaves if isinstance(a, fx.Node) and a.op == "get_attr"]


@dataclass
class FlopsModel:
    """Compact-model FLOPs as a function of which coupled channels are kept.

    ``dense`` is the dense graph's count at the example inputs; ``fixed`` the
    part of it no slotted weight scales. Each *term* is one node's FLOPs,
    scaled by the product of the kept fractions of the slots (weight
    dimensions) listed for it in ``term_slots`` (-1: no slot, factor 1).
    The same form costs anything that scales so (the latency target's
    roofline model: terms in milliseconds, :mod:`graphprune.budget.latency_model`).
    """

    dense: float
    fixed: float
    term_flops: torch.Tensor  # float64 (T,)
    term_slots: torch.Tensor  # int64 (T, D), -1 padded
    slot_classes: torch.Tensor  # class of every index of every slot, concatenated
    slot_index: torch.Tensor  # which slot each entry of slot_classes belongs to
    slot_sizes: torch.Tensor  # float64 (S,)
    #: built from the recorded shapes with the counter's own formulas: its predictions are the count
    #: (``tests/test_zoo.py`` checks them against the counter); False: node FLOPs counted by one run, and
    #: what no weight scales (a matmul of activations) held constant
    from_shapes: bool = True

    @classmethod
    def build(cls, gm: fx.GraphModule, channels: ChannelGraph, example_inputs: tuple) -> FlopsModel:
        per_node = shape_flops(gm)
        from_shapes = per_node is not None
        if per_node is None:  # run it under the counter, noting each node's share
            counter = flop_counter()
            runner = _NodeFlops(gm, counter)
            with torch.no_grad(), counter:
                runner.run(*fresh_copy(example_inputs))
            per_node = runner.flops
        terms, fixed = cls._terms(gm, channels, per_node)
        dense = int(sum(sum(f for f, _ in c) if isinstance(c, list) else c for c in per_node.values()))
        model = cls.of_terms(channels, terms, fixed, dense)
        model.from_shapes = from_shapes
        return model

    @classmethod
    def of_terms(cls, channels: ChannelGraph, terms: list[tuple[float, list[int]]], fixed: float,
                 dense: float) -> FlopsModel:
        """The model of ``terms``: (amount at full width, the slots whose kept fractions scale it)."""
        width = max((len(s) for _, s in terms), default=1)
        term_slots = torch.full((len(terms), width), -1, dtype=torch.int64)
        for row, (_, slots) in enumerate(terms):
            term_slots[row, : len(slots)] = torch.tensor(slots, dtype=torch.int64)
        slot_classes = [channels.class_of[s.ids] for s in channels.slots]
        return cls(
            dense=dense,
            fixed=fixed,
            term_flops=torch.tensor([float(f) for f, _ in terms], dtype=torch.float64),
            term_slots=term_slots,
            slot_classes=torch.cat(slot_classes) if slot_classes else torch.empty(0, dtype=torch.int64),
            slot_index=torch.repeat_interleave(
                torch.arange(len(slot_classes)), torch.tensor([c.numel() for c in slot_classes], dtype=torch.int64)
            ),
            slot_sizes=torch.tensor([float(c.numel()) for c in slot_classes], dtype=torch.float64),
        )

    @staticmethod
    def slots_of(channels: ChannelGraph) -> dict[str, list[int]]:
        """Per tensor name, the indices of its slots."""
        out: dict[str, list[int]] = {}
        for i, slot in enumerate(channels.slots):
            out.setdefault(slot.target, []).append(i)
        return out

    @staticmethod
    def weight_of(gm: fx.GraphModule, node: fx.Node, slots_of: dict[str, list[int]]) -> str | None:
        """The slotted weight a node's FLOPs scale with: the biggest slotted tensor it reads (a bias is slotted too)."""
        slotted = [t for t in _tensors_read(gm, node) if t in slots_of]
        return max(slotted, key=lambda t: get_tensor(gm, t).numel()) if slotted else None

    @classmethod
    def _terms(cls, gm: fx.GraphModule, channels: ChannelGraph,
               flops: dict[fx.Node, int | list[Part]]) -> tuple[list[tuple[float, list[int]]], int]:
        """Per node that its weight scales: (FLOPs, that weight's slots); per
        part of a node given as parts, (FLOPs, the slots of its weight dims);
        and the rest's FLOPs."""
        slots_of = cls.slots_of(channels)
        slot_at = {(slot.target, slot.dim): i for i, slot in enumerate(channels.slots)}
        terms: list[tuple[float, list[int]]] = []
        fixed = 0
        for node, count in flops.items():
            if isinstance(count, list):
                for part, dims in count:
                    scaled = [slot_at[d] for d in dims if d in slot_at]
                    if scaled:
                        terms.append((part, scaled))
                    else:
                        fixed += part
                continue
            weight = cls.weight_of(gm, node, slots_of)
            if weight is None:
                fixed += count
                continue
            terms.append((count, slots_of[weight]))
        return terms, fixed

    def _predict(self, kept_classes: torch.Tensor) -> torch.Tensor:
        kept = torch.zeros(self.slot_sizes.numel(), dtype=torch.float64)
        kept = kept.index_add(0, self.slot_index, kept_classes[self.slot_classes])
        fraction = kept / self.slot_sizes.clamp_min(1)
        fraction = torch.cat([fraction, torch.ones(1, dtype=torch.float64)])  # index -1: factor 1
        scale = fraction[self.term_slots].prod(dim=1)
        return self.fixed + (self.term_flops * scale).sum()

    def predict(self, class_kept: torch.Tensor) -> float:
        """FLOPs of the compact model that keeps ``class_kept``."""
        return float(self._predict(class_kept.double()))

    def marginal(self, class_kept: torch.Tensor) -> torch.Tensor:
        """Per class, what keeping one more of its channels adds at ``class_kept``
        (the derivative of :meth:`predict`): what dropping it saves."""
        kept = class_kept.double().requires_grad_()
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(self._predict(kept), kept)
        return grad
