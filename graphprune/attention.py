"""Attention whose model dim lost channels.

``nn.MultiheadAttention`` reads the model dim through ``in_proj`` and writes
it through ``out_proj``; its heads live in between. Pruning the model dim
slices ``in_proj``'s columns and ``out_proj``'s rows and leaves the heads
whole, so the scores are the masked model's exactly. The standard module
cannot run that way (it checks that its input is ``embed_dim`` wide), so the
compact model gets :class:`CompactMultiheadAttention`: the same computation
with the head dims taken from the layer, not from the input.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compact import CompactLayer


class CompactMultiheadAttention(CompactLayer):
    """Self-attention of an ``nn.MultiheadAttention`` (packed ``in_proj``, no
    masks, no added key/value biases) whose model dim lost channels. Same
    parameter names, same call signature for what it supports."""

    why = "its model dim is narrower than its heads (in_proj's columns and out_proj's rows sliced)"

    def __init__(self, layer: nn.MultiheadAttention):
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = layer.embed_dim, layer.num_heads, layer.head_dim
        self.dropout, self.batch_first = layer.dropout, layer.batch_first
        self.in_proj_weight, self.in_proj_bias = layer.in_proj_weight, layer.in_proj_bias
        self.out_proj = layer.out_proj
        self.training = layer.training

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: None = None,
                need_weights: bool = True, attn_mask: None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise ValueError("CompactMultiheadAttention runs self-attention without masks only")
        x = query if self.batch_first else query.transpose(0, 1)  # (N, L, E')
        n, length = x.shape[0], x.shape[1]
        q, k, v = (t.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = torch.softmax((q * self.head_dim ** -0.5) @ k.transpose(-2, -1), dim=-1)
            weights = scores.mean(1) if average_attn_weights else scores
            out = F.dropout(scores, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, self.embed_dim))
        return (out if self.batch_first else out.transpose(0, 1)), weights

    def extra_repr(self) -> str:
        return (f"model dim {self.in_proj_weight.shape[1]}, {self.num_heads} heads of {self.head_dim} "
                f"(embed_dim {self.embed_dim}), batch_first={self.batch_first}")
