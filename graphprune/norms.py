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
were dropped. It computes that as the framework's own layer norm over the
kept channels padded back with N - n zeros (:func:`counted_layer_norm`), so
ONNX export writes the runtime's fused ``LayerNormalization``.

The same holds for every mean over channels: in the compact model it is the
sum over the kept channels divided by the *original* count
(:func:`counted_mean`), and a variance adds back what the dropped zeros
contribute (:func:`counted_var`); a sum or a p-norm needs nothing (a zero adds
nothing). GroupNorm is that, per group, with each group's own original and
kept counts (a group with no kept channel is gone); RMSNorm divides the sum
of squares by the original count. The compact-norm modules keep their
layer's parameter names, so state dicts keep their keys.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .compact import CompactLayer


def counted_layer_norm(x: torch.Tensor, total: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                       eps: float) -> torch.Tensor:
    """LayerNorm over the last dim of ``x`` as if it had ``total`` entries, the missing ones zero.

    Computed as what it is: the runtime's own layer norm over ``x`` padded
    with those zeros (a norm over the last dim does not depend on the order
    of its entries; gamma and beta padded alike), the padding cut off again.
    ONNX export writes one fused ``LayerNormalization`` (plus a pad and a
    slice), not a dozen elementwise ops: on ONNX Runtime, one such norm
    alone takes 1.6-2.3x a standard LayerNorm of the kept width, the
    plain-op form 3.4-4.0x (``benchmarks/norm_latency.py``)."""
    kept = x.shape[-1]
    if kept == total:
        return F.layer_norm(x, (kept,), weight, bias, eps)
    pad = (0, total - kept)
    return F.layer_norm(F.pad(x, pad), (total,), None if weight is None else F.pad(weight, pad),
                        None if bias is None else F.pad(bias, pad), eps)[..., :kept]


class CompactNorm(CompactLayer):
    """A norm layer that lost channels: its statistics still count the original ones."""

    why = "its statistics count the channels of the original"


class CompactLayerNorm(CompactNorm):
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


def counted_mean(x: torch.Tensor, dim: Any, keepdim: bool, total: int) -> torch.Tensor:
    """``x.mean(dim)`` as if the reduced dims held ``total`` entries, the missing ones zero."""
    return x.sum(dim, keepdim=keepdim) / total


def counted_var(x: torch.Tensor, dim: Any, correction: float, keepdim: bool, total: int,
                sqrt: bool = False) -> torch.Tensor:
    """``x.var(dim, correction=...)`` (``x.std`` with ``sqrt``) as if the reduced
    dims held ``total`` entries, the missing ones zero."""
    dims = tuple(range(x.ndim)) if dim is None else (dim,) if isinstance(dim, int) else tuple(dim)
    kept = math.prod(x.shape[d] for d in dims)
    mean = x.sum(dims, keepdim=True) / total
    squares = (x - mean).pow(2).sum(dims, keepdim=True) + (total - kept) * mean.pow(2)
    var = squares / max(total - correction, 0)
    var = var if keepdim else var.squeeze(dims)
    return var.sqrt() if sqrt else var


def counted_rms_norm(x: torch.Tensor, total: int, weight: torch.Tensor | None, eps: float | None) -> torch.Tensor:
    """RMSNorm over the last dim of ``x`` as if it had ``total`` entries, the missing ones zero."""
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    y = x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / total + eps)
    return y * weight if weight is not None else y


def counted_group_norm(x: torch.Tensor, groups: tuple[int, ...], group_size: int, weight: torch.Tensor | None,
                       bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """GroupNorm of ``x`` (N, C', *) whose kept channel ``i`` belongs to
    group ``groups[i]`` (0..G'-1, every group holding at least one) of
    ``group_size`` channels originally, the missing ones zero. Group sums are
    products with a constant membership matrix: plain MatMuls in ONNX."""
    count = max(groups) + 1
    member = torch.tensor([[float(g == j) for j in range(count)] for g in groups], dtype=x.dtype, device=x.device)
    missing = torch.tensor([group_size - groups.count(j) for j in range(count)], dtype=x.dtype, device=x.device)
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    positions = flat.shape[-1]
    total = group_size * positions
    group_mean = flat.sum(-1) @ member / total  # (N, G')
    centered = flat - (group_mean @ member.t()).unsqueeze(-1)
    squares = centered.pow(2).sum(-1) @ member + missing * positions * group_mean.pow(2)
    scale = torch.rsqrt(squares / total + eps) @ member.t()
    y = (centered * scale.unsqueeze(-1)).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


class CompactGroupNorm(CompactNorm):
    """An ``nn.GroupNorm`` that lost channels (see :func:`counted_group_norm`)."""

    def __init__(self, layer: nn.GroupNorm, groups: list[int]):
        super().__init__()
        self.groups = tuple(int(g) for g in groups)
        self.group_size = layer.num_channels // layer.num_groups
        self.num_groups, self.num_channels = max(self.groups) + 1, len(self.groups)
        self.eps, self.affine = layer.eps, layer.affine
        self.weight, self.bias = layer.weight, layer.bias
        self.training = layer.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return counted_group_norm(x, self.groups, self.group_size, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, statistics over groups of "
                f"{self.group_size} channels")


class CompactRMSNorm(CompactNorm):
    """An ``nn.RMSNorm`` over the last dim that lost channels."""

    def __init__(self, layer: nn.RMSNorm, total: int, kept: int):
        super().__init__()
        self.normalized_shape, self.total = (int(kept),), int(total)
        self.eps, self.elementwise_affine = layer.eps, layer.elementwise_affine
        self.weight = layer.weight
        self.training = layer.training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return counted_rms_norm(x, self.total, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, statistics over {self.total} channels"


def counted_standardization(weight: torch.Tensor, total: int, gain: torch.Tensor | None, eps: float) -> torch.Tensor:
    """Weight standardisation (each filter to zero mean, unit variance over its
    inputs and kernel, then times ``gain``, per filter) as if each filter had
    ``total`` entries, the missing ones zero: a LayerNorm over the flattened filter."""
    flat = counted_layer_norm(weight.reshape(weight.shape[0], -1), total, None, None, eps)
    if gain is not None:
        flat = flat * gain.reshape(-1, 1)
    return flat.reshape(weight.shape)


class CompactStandardizedConv2d(CompactNorm, nn.Conv2d):
    """A weight-standardised conv (timm's ``StdConv2d``, ``ScaledStdConv2d`` and
    their ``Same`` variants) that lost input channels: each filter's statistics
    still count the ``total`` inputs x kernel of the original. A Conv2d with
    the layer's attributes and parameter names (``weight``, ``bias``, ``gain``)."""

    why = "each filter's weight standardisation counts the inputs of the original"

    def __init__(self, layer: nn.Conv2d, total: int):
        nn.Module.__init__(self)
        attributes = {k: v for k, v in vars(layer).items() if not k.startswith("_")}
        self.__dict__.update(attributes, _reversed_padding_repeated_twice=layer._reversed_padding_repeated_twice)
        self.total = int(total)
        self.weight, self.bias = layer.weight, layer.bias
        if "gain" in layer._parameters:
            self.gain = layer.gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(self, "same_pad", False):
            from timm.layers.padding import pad_same  # the layer came from timm

            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        gain = self.gain * self.scale if "gain" in self._parameters else None
        weight = counted_standardization(self.weight, self.total, gain, self.eps)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, standardised over {self.total} inputs x kernel"
