"""What a budget search chose and achieved."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from ..pipeline import CompileState

Build = Callable[[torch.Tensor], nn.Module]  # kept classes -> the compact model that keeps them


@dataclass
class BudgetResult:
    """What a FLOPs or latency target asked for and what the chosen cut achieved.

    ``kind`` is ``"flops"`` or ``"latency"``; ``target`` the fraction of the
    dense model asked for and ``achieved`` the fraction reached (of the dense
    FLOPs, or of the dense latency); ``flops_fraction`` the chosen model's
    FLOPs fraction either way. ``ranked_dropped`` of the ``ranked`` channels
    of the global ranking were dropped. A latency target also records the
    medians of the chosen candidate (``dense_ms``, ``compact_ms``), every
    candidate timed and how.
    """

    kind: str
    target: float
    achieved: float
    flops_fraction: float
    flops_dense: int
    flops_predicted: float
    ranked_dropped: int
    ranked: int
    class_kept: torch.Tensor = field(repr=False)
    #: the compact model's FLOPs counted by running it under torch.utils.flop_counter, where the FLOPs model
    #: could not be built from shapes (None where it was: its arithmetic is the counter's, checked in tests)
    flops_confirmed: int | None = None
    dense_ms: float | None = None
    compact_ms: float | None = None
    candidates: list[dict[str, float]] = field(default_factory=list)
    method: str | None = None
    notes: list[str] = field(default_factory=list)
    trade: dict | None = None  # with trade_flops: the traded order against the plain one (see budget/trade.py)

    def __str__(self) -> str:
        if self.kind == "flops":
            return f"FLOPs target {self.target:g}, achieved {self.achieved:.4f} of dense"
        return (f"latency target {self.target:g}, achieved {self.achieved:.3f} of dense "
                f"({self.dense_ms:.2f} -> {self.compact_ms:.2f} ms, medians)")


def why_limited(state: CompileState) -> str:
    config = state.config
    parts = [f"{state.channels.prunable_fraction:.0%} of produced channels are prunable"]
    if config.ignore:
        parts.append(f"ignore={list(config.ignore)}")
    if config.min_channels > 1:
        parts.append(f"min_channels={config.min_channels}")
    if config.round_to > 1:
        parts.append(f"round_to={config.round_to}")
    return ", ".join(parts)
