"""trade_flops: channels ranked by score over the time a FLOP of theirs costs.

A budget search cuts global mode's ranking, lowest score first. With
``trade_flops`` the order is :func:`~graphprune.budget.latency_model.latency_order`'s
instead: each score divided by what a FLOP of that channel costs in time on
the runtime (a roofline measured here), so that at equal score a channel of a
memory-bound layer goes first. For a FLOPs target the compact model keeps
the same FLOPs and runs faster; for a latency target it meets the latency
keeping more FLOPs. The price is score: the cut no longer follows the score
alone, and the report says what moved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..flops import FlopsModel
from .flops_search import FlopsSearch
from .latency_model import Roofline, importance_kept, latency_model, latency_order
from .result import BudgetResult

if TYPE_CHECKING:
    from ..pipeline import CompileState


@dataclass
class Trade:
    """The traded order (``search``: a FLOPs search along it) beside the plain one (``plain``)."""

    plain: FlopsSearch
    search: FlopsSearch
    model: FlopsModel  # the roofline model: terms in milliseconds
    roofline: Roofline

    @classmethod
    def of(cls, state: CompileState, plain: FlopsSearch, fraction: float, threads: int | None) -> Trade | None:
        """The traded order, its costs taken where the plain order keeps ``fraction`` of the FLOPs
        (None where the roofline model has no formula for the graph)."""
        found = latency_model(state, threads)
        if found is None:
            return None
        model, roofline = found
        at = plain.kept_at(fraction * plain.dense)
        ranking = plain.ranking
        order = latency_order(ranking.order, ranking.scores, model, plain.model, at)
        search = FlopsSearch(state, ranking.reordered(order), plain.finish,
                             model=plain.model)
        return cls(plain, search, model, roofline)

    def summary(self, state: CompileState, kept: torch.Tensor, alike: str) -> tuple[str, dict]:
        """What the order did at ``kept``, against the plain order cut at the same
        predicted latency (``alike="latency"``) or the same FLOPs (``"flops"``)."""
        if alike == "latency":
            same = FlopsSearch(state, self.plain.ranking, self.plain.finish, model=self.model)
            plain = same.kept_at(self.model.predict(kept))
        else:
            plain = self.plain.kept_at(self.plain.predict(kept))
        scores, order = self.plain.ranking.scores, self.plain.ranking.order
        mine, theirs = importance_kept(scores, order, kept), importance_kept(scores, order, plain)
        dense = self.plain.dense or 1
        flops, plain_flops = self.plain.predict(kept) / dense, self.plain.predict(plain) / dense
        ms, plain_ms = self.model.predict(kept) / self.model.dense, self.model.predict(plain) / self.model.dense
        shift = sorted((int(kept[g.classes].sum()) - int(plain[g.classes].sum()), g.name) for g in state.groups)
        more = [f"{name} ({-d})" for d, name in shift[:3] if d < 0]
        less = [f"{name} (+{d})" for d, name in reversed(shift[-3:]) if d > 0]
        note = (f"trade_flops: channels ranked by score over the time a FLOP of theirs costs (a roofline of the "
                f"runtime measured here: {self.roofline}; a channel of a memory-bound layer, such as a depthwise "
                f"conv at high resolution, saves more time per FLOP). At the chosen cut this keeps {mine:.1%} of "
                f"the ranked channels' score, {flops:.3f} of the FLOPs and, predicted, {ms:.3f} of the time; "
                f"ranked by score alone and cut at the same {'predicted latency' if alike == 'latency' else 'FLOPs'}: "
                f"{theirs:.1%}, {plain_flops:.3f} and {plain_ms:.3f}. Pruned more than by score alone: "
                f"{', '.join(more) or 'none'}; less: {', '.join(less) or 'none'} (trade_flops=False ranks by "
                "score alone)")
        data = {"ranking": "score per ms per FLOP", "roofline_gflops": self.roofline.flops_per_ms / 1e6,
                "roofline_gbytes": self.roofline.bytes_per_ms / 1e6, "score_kept": mine,
                "score_kept_plain": theirs, "flops_fraction_plain": plain_flops,
                "predicted_time_fraction": ms, "predicted_time_fraction_plain": plain_ms,
                "pruned_more": more, "pruned_less": less}
        return note, data


def trade_notes(state: CompileState, trade: Trade | None, result: BudgetResult, alike: str) -> None:
    """What trade_flops did, in the result's notes and ``trade``."""
    if trade is not None:
        note, result.trade = trade.summary(state, result.class_kept, alike)
        result.notes.append(note)
    elif state.config.trade_flops:
        result.notes.append("trade_flops: channels ranked by score alone after all (the roofline model has no "
                            "formula for this graph's matrix products)")
