"""Normalisation over channels, exact after pruning.

In the masked model a dropped channel is an exact zero, and it still counts
in the statistics of a norm over channels. A compact LayerNorm over the kept
n of N channels reproduces the masked one exactly if it keeps N in its
statistics:

    mean = sum_kept(x) / N
    var  = (sum_kept((x - mean)^2) + (N - n) * mean^2) / N

(the dropped zeros each add mean^2 to the sum of squares; the two-pass form,
no E[x^2] - mean^2 cancellation), with gamma and beta sliced: a dropped
channel's output is 0 because the masked model zeroes its gamma and beta.
:class:`CompactLayerNorm` replaces an ``nn.LayerNorm`` only where channels
were dropped; its ONNX export is plain ops.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def counted_layer_norm(x: torch.Tensor, total: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       eps: float) -> torch.Tensor:
    """LayerNorm over the last dim of ``x`` as if it had ``total`` entries, the missing ones zero."""
    kept = x.shape[-1]
    mean = x.sum(-1, keepdim=True) / total
    centered = x - mean
    var = (centered.pow(2).sum(-1, keepdim=True) + (total - kept) * mean.pow(2)) / total
    y = centered * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class CompactLayerNorm(nn.Module):
    """An ``nn.LayerNorm`` over the last dim that lost channels: its statistics
    still count the ``total`` channels of the original (see the module docstring).
    Parameter names are LayerNorm's, so state dicts stay the same."""

    def __init__(self, layer: nn.LayerNorm, total: int, kept: int):
        super().__init__()
        self.normalized_shape = (int(kept),)
        self.eps = layer.eps
        self.elementwise_affine = layer.elementwise_affine
        self.total = int(total)
        self.weight = layer.weight
        self.bias = layer.bias
        self.training = layer.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return counted_layer_norm(x, self.total, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, statistics over {self.total} channels"
