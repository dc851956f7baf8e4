"""Attention whose model dim lost channels.

``nn.MultiheadAttention`` reads the model dim through ``in_proj`` and writes
it through ``out_proj``; its heads live in between. Pruning the model dim
slices ``in_proj``'s columns and ``out_proj``'s rows and leaves the heads
whole, so the scores are the masked model's exactly. The standard module
cannot run that way (it checks that its input is ``embed_dim`` wide), so the
compact model gets :class:`CompactMultiheadAttention`: the same computation
with the head dims taken from the layer, not from the input, and as many
heads as ``in_proj`` has rows for (with whole heads, some are dropped).
Swin's window attention (torchvision's ``shifted_window_attention``, a
function of the block's tensors) gets the same treatment: the compact graph
calls :func:`shifted_window_attention` here, which takes the heads' width
from ``qkv_weight`` and the output's from ``proj_weight``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compact import CompactLayer


class CompactMultiheadAttention(CompactLayer):
    """Self-attention of an ``nn.MultiheadAttention`` (packed ``in_proj``, no
    masks, no added key/value biases) whose model dim lost channels. Same
    parameter names, same call signature for what it supports."""

    why = ("its model dim is narrower than its heads, or it lost heads (in_proj's columns and out_proj's rows "
           "sliced, or whole heads' rows and columns)")

    def __init__(self, layer: nn.MultiheadAttention):
        super().__init__()
        self.head_dim = layer.head_dim
        self.num_heads = layer.in_proj_weight.shape[0] // (3 * layer.head_dim)  # the heads kept
        self.embed_dim = self.num_heads * self.head_dim  # the heads' width (the model dim is the weights')
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


def _windows(x: torch.Tensor, window: list[int]) -> torch.Tensor:
    """(B, H, W, C) -> (B * windows, window positions, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // window[0], window[0], w // window[1], window[1], c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window[0] * window[1], c)


def _shift_mask(height: int, width: int, window: list[int], shift: list[int], like: torch.Tensor) -> torch.Tensor:
    """(windows, positions, positions): 0 where two positions of a shifted
    window come from the same region of the feature map, -100 where not."""
    region = like.new_zeros((height, width))
    label = 0
    for rows in ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None)):
        for cols in ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None)):
            region[rows[0]:rows[1], cols[0]:cols[1]] = label
            label += 1
    labels = _windows(region[None, :, :, None], window).squeeze(-1)  # (windows, positions)
    different = (labels.unsqueeze(1) - labels.unsqueeze(2)) != 0
    return torch.zeros_like(different, dtype=like.dtype).masked_fill(different, -100.0)


def shifted_window_attention(input: torch.Tensor, qkv_weight: torch.Tensor, proj_weight: torch.Tensor,
                             relative_position_bias: torch.Tensor, window_size: list[int], num_heads: int,
                             shift_size: list[int], attention_dropout: float = 0.0, dropout: float = 0.0,
                             qkv_bias: torch.Tensor | None = None, proj_bias: torch.Tensor | None = None,
                             logit_scale: torch.Tensor | None = None, training: bool = True) -> torch.Tensor:
    """Swin's (shifted) window attention, with torchvision's signature, for
    a model dim that lost channels: the heads' width comes from ``qkv_weight``
    (3 x heads x head dim rows) and the output's from ``proj_weight``, not
    from the input, so the input and output may be narrower than the heads."""
    b, height, width, _ = input.shape
    pad_w, pad_h = (-width) % window_size[1], (-height) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_w, 0, pad_h))
    padded_h, padded_w = x.shape[1], x.shape[2]
    shift = [0 if window_size[0] >= padded_h else shift_size[0], 0 if window_size[1] >= padded_w else shift_size[1]]
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    x = _windows(x, window_size)  # (B * windows, positions, C')
    count, positions = x.shape[0], x.shape[1]
    inner = qkv_weight.shape[0] // 3
    if logit_scale is not None and qkv_bias is not None:  # Swin V2: no bias on the keys
        qkv_bias = torch.cat([qkv_bias[:inner], torch.zeros_like(qkv_bias[inner:2 * inner]), qkv_bias[2 * inner:]])
    qkv = F.linear(x, qkv_weight, qkv_bias).reshape(count, positions, 3, num_heads, inner // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    if logit_scale is not None:  # Swin V2: cosine attention
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scores = scores * torch.clamp(logit_scale, max=math.log(100.0)).exp()
    else:
        scores = (q * (inner // num_heads) ** -0.5) @ k.transpose(-2, -1)
    scores = scores + relative_position_bias
    if sum(shift) > 0:
        mask = _shift_mask(padded_h, padded_w, window_size, shift, x)
        windows = mask.shape[0]
        scores = scores.view(count // windows, windows, num_heads, positions, positions) + mask[None, :, None]
        scores = scores.view(-1, num_heads, positions, positions)
    scores = F.dropout(F.softmax(scores, dim=-1), p=attention_dropout, training=training)
    x = (scores @ v).transpose(1, 2).reshape(count, positions, inner)
    x = F.dropout(F.linear(x, proj_weight, proj_bias), p=dropout, training=training)
    out = x.shape[-1]
    x = x.view(b, padded_h // window_size[0], padded_w // window_size[1], window_size[0], window_size[1], out)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, padded_h, padded_w, out)
    if sum(shift) > 0:
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :height, :width, :].contiguous()


class CompactBlock(CompactLayer):
    """A library's attention block whose model dim lost channels: the block's
    tensors, names and settings, its own relative-position-bias method, and a
    forward that takes the heads' width from its weights."""

    why = ("its model dim is narrower than its heads, or it lost heads (the input projection's columns and the "
           "output's rows sliced, or whole heads' rows, columns and position biases)")
    #: the block class's method that computes its relative-position bias
    BIAS_METHOD = ""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.__dict__.update({k: v for k, v in layer.__dict__.items()
                              if k not in ("_parameters", "_buffers", "_modules", "forward")})
        self._parameters, self._buffers, self._modules = (dict(layer._parameters), dict(layer._buffers),
                                                          dict(layer._modules))
        self.position_bias = getattr(type(layer), self.BIAS_METHOD)  # the layer's own method


class CompactWindowAttention(CompactBlock):
    """A Swin block's window attention (torchvision's ``ShiftedWindowAttention``
    or ``...V2``) running :func:`shifted_window_attention`."""

    BIAS_METHOD = "get_relative_position_bias"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shifted_window_attention(
            x, self.qkv.weight, self.proj.weight, self.position_bias(self), self.window_size, self.num_heads,
            shift_size=self.shift_size, attention_dropout=self.attention_dropout, dropout=self.dropout,
            qkv_bias=self.qkv.bias, proj_bias=self.proj.bias, logit_scale=getattr(self, "logit_scale", None),
            training=self.training)

    def extra_repr(self) -> str:
        return (f"model dim {self.qkv.weight.shape[1]} -> {self.proj.weight.shape[0]}, {self.num_heads} heads of "
                f"{self.qkv.weight.shape[0] // 3 // self.num_heads}, window {self.window_size}, "
                f"shift {self.shift_size}")


class CompactRelativeAttention(CompactBlock):
    """MaxViT's ``RelativePositionalMultiHeadAttention`` (on (B, groups,
    positions, D)): the heads' width is ``n_heads * head_dim``, not the input's."""

    BIAS_METHOD = "get_relative_positional_bias"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, groups, positions, _ = x.shape
        heads, width = self.n_heads, self.n_heads * self.head_dim
        q, k, v = (t.reshape(b, groups, positions, heads, self.head_dim).permute(0, 1, 3, 2, 4)
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        scores = torch.softmax(q @ (k * self.scale_factor).transpose(-2, -1) + self.position_bias(self), dim=-1)
        out = (scores @ v).permute(0, 1, 3, 2, 4).reshape(b, groups, positions, width)
        return self.merge(out)

    def extra_repr(self) -> str:
        return (f"model dim {self.to_qkv.weight.shape[1]} -> {self.merge.weight.shape[0]}, {self.n_heads} heads "
                f"of {self.head_dim}")
