"""Layout ops: view/reshape, flatten, permute/transpose, cat/stack, split/chunk,
getitem/narrow, squeeze/unsqueeze, expand, channel shuffle.

The rule runs the op itself on the full-size code tensor of its inputs: the
result *is* the channel mapping. Concatenation offsets ("index alignment"),
flatten into a linear layer and channel shuffle all fall out of this without a
special case.

When the output's channels vary along two or more dims (a reshape that splits
the channel dim into groups, as channel shuffle does), a compact tensor can
only be a product set. The rule couples elements that share an index along the
dim with the most distinct channels, so pruning removes the same positions
from every group. With whole heads (``PruneConfig.heads == "whole"``) a
reshape that splits the last dim into ``(..., heads, head_dim)`` (or
``(..., 3, heads, head_dim)``, q, k and v packed) keeps the heads dim
instead: each head is one channel, kept or dropped whole.

The rewrite updates what the graph encodes about channel counts: literal
view/reshape/expand sizes, split sizes (a chunk becomes a split with the kept
counts, since the kept halves need not be equal), slice bounds.
"""

from __future__ import annotations

import itertools
import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.node import map_aggregate

from .. import ids
from .base import TensorMeta, call, describe, size_read, substitute, tensor_args, value
from .heads import head_split_dim, record_heads
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext
    from ..rewriting import RewriteContext


def finish(ctx: AnalysisContext, code: torch.Tensor, prefer: int | None = None) -> torch.Tensor:
    """A layout op's output code, compressed. Where ids vary along several
    dims (a class token joined to patch tokens, a shuffle's group dim), the
    ids at the same index of the channel dim are one channel: unified, and that dim alone varies afterwards (one representative
    id each; zero only where every position was). The channel dim is
    ``prefer`` where the rule knows it, else the dim with the most distinct runs."""
    code = ids.compress(code)
    varying = ids.varying_dims(code)
    if len(varying) >= 2:
        keep_dim = prefer if prefer in varying else max(varying, key=lambda d: (ids.distinct_runs(code, d), -d))
        ctx.unify_across(code, keep_dim)
        others = [d for d in varying if d != keep_dim]
        raw = ids.raw_ids(code)
        for d in others:
            raw = raw.narrow(d, 0, 1)
        code = ids.encode(raw, ids.zero_bits(code).all(dim=others, keepdim=True)) if others else code
    return code


class LayoutRule:
    name = "layout"

    def materialized_dims(self, node: fx.Node, ctx: AnalysisContext) -> set[int] | None:
        """Dims of the inputs that the op must see at their real size (None:
        all of them). An op that moves dims around without looking at their
        size (permute, cat along another dim) runs on compressed codes."""
        return None

    def channel_dim(self, node: fx.Node, ctx: AnalysisContext) -> int | None:
        """The output dim that holds channels, where the op knows (else None)."""
        return None

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        dims = self.materialized_dims(node, ctx)
        args, kwargs = substitute(node, lambda n: ids.expand_dims(ctx.code(n), value(n).shape, dims))
        try:
            out = call(node, ctx.gm, args, kwargs, getattr(ctx, "modules", None))
        except Exception:  # the op refuses integer tensors: let the unknown rule pin it
            return None
        prefer = self.channel_dim(node, ctx)
        return map_aggregate(out, lambda t: finish(ctx, t, prefer) if isinstance(t, torch.Tensor) else None)


class DimMovingRule(LayoutRule):
    """permute, transpose, movedim, unsqueeze, t: dims move, sizes do not
    matter, so the op runs on the compressed codes as they are."""

    def materialized_dims(self, node: fx.Node, ctx: AnalysisContext) -> set[int] | None:
        return set()


def concrete(entry: Any) -> Any:
    """An index entry with graph-computed bounds (``x[:, :n]``) replaced by
    the values the shape pass recorded."""
    if isinstance(entry, slice):
        return slice(value(entry.start), value(entry.stop), value(entry.step))
    return value(entry)


def int_list(entry: Any) -> bool:
    """A list of integer indices (``x[:, [2, 0, 2]]``; not a mask of bools)."""
    return isinstance(entry, (list, tuple)) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in entry
    )


def index_entries(index: Any, ndim: int) -> list[tuple[int, int, Any]]:
    """(position in the index, input dim it reads, entry) for each int/slice
    entry of a getitem index, with computed bounds as recorded values."""
    entries = [concrete(e) for e in (index if isinstance(index, tuple) else [index])]
    used = sum(1 for e in entries if e is not None and e is not Ellipsis)
    out: list[tuple[int, int, Any]] = []
    dim = 0
    for position, entry in enumerate(entries):
        if entry is Ellipsis:
            dim += ndim - used
        elif entry is None:
            continue
        else:
            out.append((position, dim, entry))
            dim += 1
    return out


class GetItemRule(LayoutRule):
    """``x[i]`` on a tuple (split outputs) or indexing a tensor."""

    name = "getitem"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        source, index = node.args[0], node.args[1]
        if not isinstance(value(source), TensorMeta):
            codes = ctx.code(source)
            if isinstance(codes, (tuple, list)) and isinstance(index, int):
                return codes[index]
            return None
        if tensor_args(node) != [source]:
            return None  # advanced indexing with a tensor: no rule
        code = ctx.code(source)
        varying = set(ids.varying_dims(code))
        for _, dim, entry in index_entries(index, code.ndim):
            if dim in varying and not (
                (isinstance(entry, slice) and entry.step in (None, 1)) or int_list(entry)
            ):
                ctx.pin_code(code, f"indexed channel by channel by {describe(node)} (node {node.name})")
                break
        return super().analyze(node, ctx)

    def materialized_dims(self, node: fx.Node, ctx: AnalysisContext) -> set[int] | None:
        # Only the dims the index reads; None (new axes) and Ellipsis read none.
        source, index = node.args[0], node.args[1]
        code = ctx.code(source)
        if not isinstance(code, torch.Tensor):
            return None
        return {dim for _, dim, _ in index_entries(index, code.ndim)}

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        source, index = node.args[0], node.args[1]
        if not isinstance(value(source), TensorMeta):
            return
        new = list(index) if isinstance(index, tuple) else [index]
        for position, dim, entry in index_entries(index, value(source).ndim):
            cum = rw.kept_prefix(source, dim)
            if cum is None:
                continue
            size = cum.numel() - 1
            if isinstance(entry, int):
                new[position] = int(cum[entry % size])
            elif int_list(entry):  # x[:, [2, 0, 2]]: the kept ones, at their compact positions
                kept = cum.diff().bool()
                new[position] = [int(cum[i % size]) for i in entry if kept[i % size]]
            elif isinstance(entry, slice):
                start, stop, _ = entry.indices(size)
                new[position] = slice(int(cum[start]), int(cum[max(stop, start)]), entry.step)
        node.args = (source, tuple(new) if isinstance(index, tuple) else new[0])


def depends_on_channel_count(item: Any, codes: dict) -> bool:
    """Whether a size computed in the graph (``c // g`` of ``b, c, h, w =
    x.size()``) reads the size of a dim that channels vary on: in the compact
    model that size changes, so the computed value may not be the compact one."""
    stack = [item] if isinstance(item, fx.Node) else []
    seen: set[fx.Node] = set()
    while stack:
        node = stack.pop()
        if node in seen or isinstance(value(node), TensorMeta):
            continue
        seen.add(node)
        if node.op == "call_function" and node.target is operator.getitem:
            read = size_read(node.args[0]) if isinstance(node.args[0], fx.Node) else None
            if read is not None and read[1] is None and isinstance(node.args[1], int):
                read = (read[0], node.args[1])
                code = codes.get(read[0].name)
                if isinstance(code, torch.Tensor) and code.shape[read[1] % code.ndim] > 1:
                    return True
                continue
        read = size_read(node)
        if read is not None:
            code = codes.get(read[0].name)
            if isinstance(code, torch.Tensor):
                dims = range(code.ndim) if read[1] is None else [read[1] % code.ndim]
                if any(code.shape[d] > 1 for d in dims):
                    return True
            continue
        stack.extend(n for n in node.all_input_nodes)
    return False


class ShapeArgsRule(LayoutRule):
    """view/reshape/expand: sizes become the compact sizes.

    Literal sizes are replaced. So are sizes computed in the graph from a
    channel count: ``x.view(b, g, c // g, h, w)`` computes ``c // g`` from
    the compact input, which is right only for one of the ways the kept
    channels can be laid out over ``(g, c // g)``, so it becomes a literal,
    unless it computes the compact size anyway (a channel shuffle whose groups
    keep equal counts): then the user's code stays as it is. Sizes computed
    from the batch or spatial dims stay computed."""

    name = "reshape"

    def channel_dim(self, node: fx.Node, ctx: AnalysisContext) -> int | None:
        return head_split_dim(node, ctx)

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        out = super().analyze(node, ctx)
        record_heads(node, ctx, out, self.channel_dim(node, ctx))
        return out

    @staticmethod
    def stale(item: Any, size: int, rw: RewriteContext) -> bool:
        """Whether a size computed in forward is not ``size`` in the compact
        model: it computes another value there (a head dim computed from the
        width of an input that keeps its channels, when the heads lose some,
        too), or it reads a channel count and cannot be evaluated."""
        compact = rw.compact_value(item)
        if compact is not None:
            return compact != size
        return depends_on_channel_count(item, rw.codes) or value(item) != size

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        sizes = rw.compact_shape(node)
        if sizes is None:
            return
        first = 1
        shape_args = node.args[first:]
        packed = len(shape_args) == 1 and isinstance(shape_args[0], (tuple, list))
        if not shape_args and "shape" in node.kwargs:
            shape_args, packed = (node.kwargs["shape"],), True
        items = list(shape_args[0] if packed else shape_args)
        for i, item in enumerate(items):
            if i >= len(sizes) or (isinstance(item, int) and item == -1):
                continue
            if isinstance(item, int) or self.stale(item, sizes[i], rw):
                items[i] = sizes[i]
        if "shape" in node.kwargs and len(node.args) == 1:
            node.kwargs = {**node.kwargs, "shape": tuple(items)}
        else:
            node.args = (node.args[0], tuple(items)) if packed else (node.args[0], *items)


def split_dim(node: fx.Node) -> int:
    if len(node.args) > 2:
        return node.args[2]
    return node.kwargs.get("dim", 0)


def chunk_sizes(node: fx.Node, total: int) -> list[int] | None:
    """The pieces ``chunk`` makes of ``total`` channels, if ``node`` is a chunk."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if name.split(".")[0] != "chunk":  # a method, torch.chunk or aten.chunk.default
        return None
    chunks = node.args[1] if len(node.args) > 1 else node.kwargs.get("chunks")
    if not isinstance(chunks, int) or chunks < 1 or total < 1:
        return None
    step = -(-total // chunks)
    return [min(step, total - start) for start in range(0, total, step)]


class SplitRule(LayoutRule):
    """split/chunk: the pieces get the kept counts of their channels."""

    name = "split"

    def materialized_dims(self, node: fx.Node, ctx: AnalysisContext) -> set[int] | None:
        code = ctx.code(node.args[0]) if node.args else None
        dim = split_dim(node)
        if not isinstance(code, torch.Tensor) or not isinstance(dim, int) or isinstance(dim, bool):
            return None
        return {dim % code.ndim}

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        source = node.args[0]
        dim = split_dim(node) % value(source).ndim
        cum = rw.kept_prefix(source, dim)
        if cum is None:
            return
        # Each piece keeps what the source keeps between its bounds (a piece
        # of one channel has a code that does not vary, so its own code cannot say).
        bounds = [0, *itertools.accumulate(meta.shape[dim] for meta in value(node))]
        sizes = [int(cum[b]) - int(cum[a]) for a, b in zip(bounds, bounds[1:])]
        if chunk_sizes(node, sum(sizes)) == sizes:
            return  # chunk of the compact tensor gives the kept pieces: the code stays as it is
        node.kwargs = {}
        node.args = (source, sizes, dim)
        if node.op == "call_method":
            node.target = "split"
        else:
            node.target = torch.split


class NarrowRule(LayoutRule):
    name = "narrow"

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        source = node.args[0]
        # Bounds computed in the graph (``x.shape[1] - a``) are read as the
        # values the shape pass recorded, and become literals.
        dim, start, length = (value(a) for a in node.args[1:4])
        dim = dim % value(source).ndim
        cum = rw.kept_prefix(source, dim)
        if cum is None:
            return
        start %= cum.numel() - 1
        new_start = int(cum[start])
        node.args = (source, dim, new_start, int(cum[start + length]) - new_start)


class UnflattenRule(LayoutRule):
    name = "unflatten"

    def channel_dim(self, node: fx.Node, ctx: AnalysisContext) -> int | None:
        return head_split_dim(node, ctx)

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        sizes = rw.compact_shape(node)
        if sizes is None:
            return
        if node.op == "call_module":
            module = rw.gm.get_submodule(node.target)
            d = module.dim % len(sizes)
            module.unflattened_size = tuple(sizes[d : d + len(module.unflattened_size)])
            return
        source, dim, old = node.args[0], node.args[1], node.args[2]
        d = dim % len(sizes)
        node.args = (source, dim, tuple(-1 if o == -1 else s for o, s in zip(old, sizes[d : d + len(old)])))


class ChannelShuffleRule:
    """Channel shuffle is view(n, g, c/g, ...) -> transpose(1, 2) -> view(n, c, ...).

    The compact shuffle still has ``g`` groups and splits its *kept* channels
    into ``g`` equal groups at run time, so the same position in every group
    is coupled, whatever the sizes (with ``g`` >= ``c/g``, or one channel per
    group, no other coupling would keep the count a multiple of ``g``)."""

    name = "channel_shuffle"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        x = node.args[0]
        if node.op == "call_module":
            groups = ctx.module(node.target).groups
        else:
            groups = node.args[1] if len(node.args) > 1 else node.kwargs["groups"]
        shape = tuple(value(x).shape)
        full = ids.materialize(ctx.code(x), shape)
        grid = full.reshape(shape[0], groups, shape[1] // groups, *shape[2:])
        ctx.unify_across(ids.compress(grid), 2)
        return finish(ctx, grid.transpose(1, 2).reshape(shape))


register_rule(
    torch.flatten, torch.squeeze, "flatten", "squeeze", "expand_as", "view_as", "reshape_as", "repeat", nn.Flatten,
)(LayoutRule)
register_rule(
    torch.permute, torch.transpose, torch.swapaxes, torch.unsqueeze, torch.movedim, torch.t,
    "permute", "transpose", "unsqueeze", "movedim", "t",
)(DimMovingRule)
register_rule(nn.ChannelShuffle, F.channel_shuffle, torch.channel_shuffle)(ChannelShuffleRule)
register_rule(operator.getitem)(GetItemRule)
register_rule(torch.reshape, "view", "reshape", "expand")(ShapeArgsRule)
register_rule(torch.split, torch.chunk, "split", "chunk")(SplitRule)
register_rule(torch.narrow, "narrow")(NarrowRule)
register_rule(torch.unflatten, "unflatten", nn.Unflatten)(UnflattenRule)
