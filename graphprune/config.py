"""Options of one compile, validated once, up front."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

MODES = ("per_layer", "group", "global")
COUPLINGS = ("union", "intersection")
HEADS = ("dims", "whole")
VERIFY = (True, False, "report")


@dataclass(frozen=True)
class PruneConfig:
    """What to prune and how.

    - ``ratio``: fraction of channels to drop, in [0, 1).
    - ``criterion``: name of a registered criterion (``l1``, ``l2``, ``fpgm``,
      ``bn``, ``random`` or your own, see :func:`graphprune.register_criterion`).
    - ``mode``: ``per_layer`` (the paper: each producing layer keeps its own
      top ``1 - ratio``), ``group`` (one score per coupled channel, the ratio
      applied per group) or ``global`` (one ranking across groups).
    - ``coupling``: how per-layer choices of layers writing the same channels
      combine: ``union`` (lossless) or ``intersection`` (the paper's ablation;
      the compact model then differs from the masked one). A layer that writes
      them only as an SE gate (after a sigmoid, into a product) does not take
      part: the product is zero where the gated layer drops its channel.
    - ``heads``: how attention written with matmuls or
      ``F.scaled_dot_product_attention`` loses channels: ``dims`` (every head
      keeps the same positions of its q, k, v dims) or ``whole`` (a head is one
      channel: its q, k and v are kept or dropped together, the head dim
      unchanged). It decides how a reshape that splits a last dim into
      ``(..., heads, head_dim)`` couples channels.
    - ``ignore``: module names (or glob patterns) kept exactly as they are.
    - ``min_channels``: every group keeps at least this many channels (>= 1).
    - ``round_to``: kept channels per group rounded to the nearest multiple of
      this (``prune`` also takes ``"auto"``: the multiple ONNX Runtime runs
      fast on this CPU, the default when the target is ONNX Runtime).
    - ``ratios``: per-module ratio overrides, ``{"layer4.*": 0.7}``.
    - ``mask_bn``: zero the biases and BatchNorm gamma/beta of dropped channels
      as well as their filters (the paper's BN masking), so a dropped channel
      is exactly zero. With ``False`` only filters are zeroed and a dropped
      channel is a constant, folded into its consumers' biases where that is
      exact (``fold_constants``) and reported where it is not.
    - ``fold_constants``: fold the constants of dropped channels into the
      consumers' biases (only matters with ``mask_bn=False``).
    - ``target_flops`` / ``target_latency``: with ``mode="global"``, prune to
      this fraction of the dense model's FLOPs or measured latency instead
      of a fixed ratio.
    - ``trade_flops``: with ``target_flops`` or ``target_latency``, rank
      channels by score over the time a FLOP of theirs costs on the runtime
      (a roofline measured on ONNX Runtime, :mod:`graphprune.budget.trade`),
      so that FLOPs move to the layers where they cost least time
      (memory-bound ones, a depthwise conv at high resolution, lose channels
      first): the same FLOPs run faster, the same latency keeps more FLOPs.
      By default channels are ranked by score alone.
    - ``verify``: ``True`` checks compact == masked and raises on mismatch,
      ``"report"`` records the result only, ``False`` skips it.
    - ``outputs`` / ``train_outputs``: the output contract in eval / training
      mode (see :mod:`graphprune.contract`): ``None`` takes the model source's
      default (ultralytics: what its ONNX export emits; torchvision segmenters:
      ``out``; else every output), ``"all"`` every output, or an index, key,
      path, list of those or a function picking from the output.
    """

    ratio: float = 0.5
    criterion: str = "l1"
    mode: str = "per_layer"
    coupling: str = "union"
    heads: str = "dims"
    ignore: tuple[str, ...] = ()
    min_channels: int = 1
    round_to: int = 1
    ratios: Mapping[str, float] = field(default_factory=dict)
    mask_bn: bool = True
    fold_constants: bool = True
    target_flops: float | None = None
    target_latency: float | None = None
    trade_flops: bool = False
    verify: bool | str = True
    tolerance: float = 1e-4
    seed: int = 0
    frontend: str = "auto"
    outputs: Any = None
    train_outputs: Any = None

    def __post_init__(self) -> None:
        check_ratio(self.ratio, "ratio")
        for pattern, r in dict(self.ratios).items():
            check_ratio(r, f"ratios[{pattern!r}]")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.coupling not in COUPLINGS:
            raise ConfigError(f"coupling must be one of {', '.join(COUPLINGS)}; got {self.coupling!r}")
        if self.heads not in HEADS:
            raise ConfigError(f"heads must be one of {', '.join(HEADS)}; got {self.heads!r}")
        if not isinstance(self.min_channels, int) or self.min_channels < 1:
            raise ConfigError(f"min_channels must be an integer >= 1; got {self.min_channels!r}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be an integer >= 1; got {self.round_to!r}")
        for name in ("target_flops", "target_latency"):
            target = getattr(self, name)
            if target is None:
                continue
            if not isinstance(target, (int, float)) or isinstance(target, bool) or not 0 < target <= 1:
                raise ConfigError(f"{name} must be a fraction of the dense model in (0, 1]; got {target!r}")
            if self.mode != "global":
                raise ConfigError(f"{name} ranks channels across the whole model: use mode='global' (got {self.mode!r})")
        if self.target_flops is not None and self.target_latency is not None:
            raise ConfigError("give target_flops or target_latency, not both")
        if not isinstance(self.trade_flops, bool):
            raise ConfigError(f"trade_flops must be True or False; got {self.trade_flops!r}")
        if self.trade_flops and self.target_latency is None and self.target_flops is None:
            raise ConfigError("trade_flops trades FLOPs between layers for latency within a budget: give "
                              "target_flops or target_latency too")
        if self.verify not in VERIFY:
            raise ConfigError(f"verify must be True, False or 'report'; got {self.verify!r}")
        if not self.tolerance > 0:
            raise ConfigError(f"tolerance must be > 0; got {self.tolerance!r}")
        from .criteria import CRITERIA

        if self.criterion not in CRITERIA:
            raise ConfigError(
                f"unknown criterion {self.criterion!r}; registered: {', '.join(sorted(CRITERIA))}"
            )


def check_ratio(ratio: object, name: str) -> None:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or math.isnan(ratio):
        raise ConfigError(f"{name} must be a number in [0, 1); got {ratio!r}")
    if not 0 <= ratio < 1:
        raise ConfigError(f"{name} must be in [0, 1) (the fraction of channels to drop); got {ratio}")
