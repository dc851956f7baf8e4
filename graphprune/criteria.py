"""Criteria: how important each output channel (filter) of a layer is.

A criterion is a function from a :class:`LayerView` to one score per output
channel; higher means more important (kept first). Adding one is adding one
function::

    @graphprune.register_criterion("l1_bias")
    def l1_bias(layer):
        return layer.filters.abs().sum(1) + layer.bias.abs()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Criterion = Callable[["LayerView"], torch.Tensor]
CRITERIA: dict[str, Criterion] = {}


@dataclass(frozen=True)
class LayerView:
    """What a criterion may look at for one producing layer.

    - ``filters``: the weight with one row per output channel (C x K);
    - ``bias``: its bias (C) or None;
    - ``norm_weight``: gamma of the BatchNorm that directly scales these
      channels (C), or None;
    - ``generator``: a seeded random generator (for ``random``).
    """

    name: str
    filters: torch.Tensor
    bias: torch.Tensor | None
    norm_weight: torch.Tensor | None
    generator: torch.Generator


def register_criterion(name: str) -> Callable[[Criterion], Criterion]:
    def wrap(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn

    return wrap


@register_criterion("l1")
def l1(layer: LayerView) -> torch.Tensor:
    """Sum of absolute filter weights (Li et al., 2017)."""
    # vector_norm reduces without materialising |filters|, a copy of the weight.
    return torch.linalg.vector_norm(layer.filters, ord=1, dim=1)


@register_criterion("l2")
def l2(layer: LayerView) -> torch.Tensor:
    """Euclidean norm of each filter."""
    return layer.filters.norm(dim=1)


@register_criterion("fpgm")
def fpgm(layer: LayerView) -> torch.Tensor:
    """Filter pruning via geometric median (He et al., CVPR 2019).

    The geometric median minimises the summed distance to all filters; the
    filters nearest it are the most replaceable by the others, so the score of
    a filter is its summed distance to every other filter: the smallest scores
    are dropped first.
    """
    f = layer.filters.double()
    return torch.cdist(f, f).sum(1).to(layer.filters.dtype)


@register_criterion("bn")
def bn_gamma(layer: LayerView) -> torch.Tensor:
    """|gamma| of the BatchNorm after the layer (Liu et al., network slimming);
    L1 of the filters where no BatchNorm scales the layer."""
    if layer.norm_weight is None:
        return l1(layer)
    return layer.norm_weight.abs()


@register_criterion("random")
def random(layer: LayerView) -> torch.Tensor:
    """Uniform random scores from the seeded generator (a baseline)."""
    return torch.rand(layer.filters.shape[0], generator=layer.generator)
