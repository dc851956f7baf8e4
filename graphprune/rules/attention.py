"""Attention layers.

``nn.MultiheadAttention`` used as self-attention (query, key and value one
tensor, packed ``in_proj``, no masks) reads its input's channels through
``in_proj``'s columns, like a linear layer, and writes fresh channels through
``out_proj``'s rows. Its heads keep their dims; with whole heads
(``PruneConfig.heads == "whole"``) each head is one channel, written by its
q, k and v rows of ``in_proj`` and read by its columns of ``out_proj``. The
compact model runs :class:`~graphprune.attention.CompactMultiheadAttention`
where the model dim or the heads lost channels. Any other use (cross-attention, masks, separate projections,
``add_bias_kv``) pins what it reads.

Swin's window attention block (torchvision's ``ShiftedWindowAttention`` and
``...V2``) and MaxViT's relative attention, traced as one call, are the same:
an input projection's columns read the model dim, an output projection's
rows and bias write it, and with whole heads each head is one channel, with
its relative-position bias; the compact model runs their compact forms
(:mod:`graphprune.attention`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.fx as fx
import torch.nn as nn
from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
from torchvision.models.swin_transformer import ShiftedWindowAttention, ShiftedWindowAttentionV2

from ..attention import CompactMultiheadAttention, CompactRelativeAttention, CompactWindowAttention
from .base import UnknownOpRule, argument, opaque, qualified, value
from .creating import consume, out_code
from .normalization import swap_module
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext
    from ..rewriting import RewriteContext

MASKS = ("key_padding_mask", "attn_mask")


class MultiheadAttentionRule:
    name = "multihead_attention"

    @staticmethod
    def supported(node: fx.Node, layer: nn.MultiheadAttention) -> bool:
        q, k, v = (argument(node, i, name) for i, name in enumerate(("query", "key", "value")))
        masks = [argument(node, 3, MASKS[0]), argument(node, 5, MASKS[1])]
        return (q is k is v and isinstance(q, fx.Node) and all(m is None for m in masks)
                and not argument(node, 7, "is_causal", False) and layer._qkv_same_embed_dim
                and layer.in_proj_weight is not None and layer.bias_k is None and layer.bias_v is None)

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        layer, path = ctx.module(node.target), str(node.target)
        if not self.supported(node, layer):
            return UnknownOpRule().analyze(node, ctx)
        x = node.args[0]
        incoming = consume(ctx, node, ctx.code(x), -1, layer.embed_dim)
        if incoming is None:
            return UnknownOpRule().analyze(node, ctx)
        ctx.add_slot(qualified(path, "in_proj_weight"), 1, incoming, writes=False, kind="input")
        if ctx.whole_heads and layer.num_heads > 1:
            self.whole_heads(ctx, path, layer)
        raw = ctx.fresh(layer.embed_dim)
        out_weight = qualified(path, "out_proj.weight")
        ctx.add_slot(out_weight, 0, raw, writes=True, kind="filter")
        if layer.out_proj.bias is not None:
            ctx.add_slot(qualified(path, "out_proj.bias"), 0, raw, writes=True, kind="bias")
        ctx.add_producer(qualified(path, "out_proj"), out_weight, 0, raw)
        codes = opaque(node, ctx, f"attention weights of {path!r}")  # (output, weights or None)
        return (out_code(raw, value(node)[0].ndim, -1), codes[1])

    @staticmethod
    def whole_heads(ctx: AnalysisContext, path: str, layer: nn.MultiheadAttention) -> None:
        """Each head one channel: its q, k and v rows of in_proj write it (a
        dropped head's are zero in the masked model, so its output is zero),
        its columns of out_proj read it."""
        heads = ctx.fresh(layer.num_heads)
        columns = heads.repeat_interleave(layer.head_dim)
        rows = columns.repeat(3)
        weight = qualified(path, "in_proj_weight")
        ctx.add_slot(weight, 0, rows, writes=True, kind="filter")
        if layer.in_proj_bias is not None:
            ctx.add_slot(qualified(path, "in_proj_bias"), 0, rows, writes=True, kind="bias")
        ctx.add_producer(path, weight, 0, rows)
        ctx.add_slot(qualified(path, "out_proj.weight"), 1, columns, writes=False, kind="input")
        ctx.heads[path] = heads

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        layer = rw.gm.get_submodule(str(node.target))  # its tensors sliced already
        if layer.in_proj_weight.shape != (3 * layer.embed_dim, layer.embed_dim) or \
                layer.out_proj.weight.shape != (layer.embed_dim, layer.embed_dim):
            swap_module(rw, node, CompactMultiheadAttention)


class ProjectedBlockRule:
    """A library's attention block traced as one call, which reads its input's
    last dim through one linear layer's columns and writes its output through
    another's rows (Swin's window attention: ``qkv`` and ``proj``; MaxViT's:
    ``to_qkv`` and ``merge``). Where the model dim lost channels the compact
    model runs the block's compact form. With whole heads each head is one
    channel: its q, k and v rows of the input projection write it (a dropped
    head's output is zero in the masked model, whatever its position bias), its
    columns of the output projection and its entries of the per-head tensors
    (relative-position bias tables, Swin V2's logit scales) follow it."""

    name = "attention_block"
    whole = True

    def __init__(self, reads: str, writes: str, compact: type, heads: str, per_head: tuple[tuple[str, int], ...]):
        self.reads, self.writes, self.compact = reads, writes, compact
        self.heads, self.per_head = heads, per_head

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        layer, path = ctx.module(node.target), str(node.target)
        if len(node.args) != 1 or node.kwargs:
            return UnknownOpRule().analyze(node, ctx)
        source, sink = layer.get_submodule(self.reads), layer.get_submodule(self.writes)
        incoming = consume(ctx, node, ctx.code(node.args[0]), -1, source.in_features)
        if incoming is None:
            return UnknownOpRule().analyze(node, ctx)
        ctx.add_slot(qualified(path, f"{self.reads}.weight"), 1, incoming, writes=False, kind="input")
        if ctx.whole_heads and getattr(layer, self.heads) > 1:
            self.whole_heads(ctx, path, layer, source)
        raw = ctx.fresh(sink.out_features)
        weight = qualified(path, f"{self.writes}.weight")
        ctx.add_slot(weight, 0, raw, writes=True, kind="filter")
        if sink.bias is not None:
            ctx.add_slot(qualified(path, f"{self.writes}.bias"), 0, raw, writes=True, kind="bias")
        ctx.add_producer(qualified(path, self.writes), weight, 0, raw)
        return out_code(raw, value(node).ndim, -1)

    def whole_heads(self, ctx: AnalysisContext, path: str, layer: nn.Module, source: nn.Linear) -> None:
        count = getattr(layer, self.heads)
        heads = ctx.fresh(count)
        columns = heads.repeat_interleave(source.out_features // 3 // count)
        rows = columns.repeat(3)  # q, k, v, each heads x head dim
        weight = qualified(path, f"{self.reads}.weight")
        ctx.add_slot(weight, 0, rows, writes=True, kind="filter")
        if source.bias is not None:
            ctx.add_slot(qualified(path, f"{self.reads}.bias"), 0, rows, writes=True, kind="bias")
        ctx.add_producer(qualified(path, self.reads), weight, 0, rows)
        ctx.add_slot(qualified(path, f"{self.writes}.weight"), 1, columns, writes=False, kind="input")
        for name, dim in self.per_head:
            if name in dict(layer.named_parameters()):
                ctx.add_slot(qualified(path, name), dim, heads, writes=False, kind="param")
        ctx.heads[path] = heads

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        layer = rw.gm.get_submodule(str(node.target))  # its tensors sliced already
        source = layer.get_submodule(self.reads)
        linears = [m for m in layer.modules() if isinstance(m, nn.Linear)]
        if all(tuple(m.weight.shape) == (m.out_features, m.in_features) for m in linears):
            return
        head_dim = source.out_features // 3 // getattr(layer, self.heads)
        setattr(layer, self.heads, source.weight.shape[0] // 3 // head_dim)  # the heads kept
        for linear in linears:
            linear.out_features, linear.in_features = linear.weight.shape
        swap_module(rw, node, self.compact)


register_rule(nn.MultiheadAttention)(MultiheadAttentionRule)
register_rule(ShiftedWindowAttention, ShiftedWindowAttentionV2)(ProjectedBlockRule(
    "qkv", "proj", CompactWindowAttention, heads="num_heads",
    per_head=(("relative_position_bias_table", 1), ("logit_scale", 0), ("cpb_mlp.2.weight", 0))))
register_rule(RelativePositionalMultiHeadAttention)(ProjectedBlockRule(
    "to_qkv", "merge", CompactRelativeAttention, heads="n_heads", per_head=(("relative_position_bias_table", 1),)))
