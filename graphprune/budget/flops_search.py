"""Pruning to a FLOPs target: where to cut global mode's ranking (see :mod:`graphprune.budget`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..flops import FlopsModel, count_flops
from .result import BudgetResult, Build, why_limited

if TYPE_CHECKING:
    from ..pipeline import CompileState

#: relative distance to a FLOPs target that counts as met (|achieved - target| <= this * target)
FLOPS_TOLERANCE = 0.01
#: real counts used to confirm (and correct) the FLOPs model's choice
FLOPS_CONFIRMATIONS = 3


# -- the search -----------------------------------------------------------------


@dataclass
class Ranking:
    """Global mode's ranking (the select pass builds it): ``protected``
    classes are always kept, ``order`` lists the others, first to drop first,
    by ``scores`` (one per class, comparable across groups)."""

    protected: torch.Tensor
    order: torch.Tensor
    scores: torch.Tensor

    @property
    def size(self) -> int:
        return self.order.numel()

    def keep(self, n_drop: int) -> torch.Tensor:
        """Kept classes when the first ``n_drop`` ranked channels are dropped."""
        kept = self.protected.clone()
        kept[self.order[n_drop:]] = True
        return kept

    def reordered(self, order: torch.Tensor) -> Ranking:
        """The same ranking in another order (trade_flops')."""
        return Ranking(self.protected, order, self.scores)


Finish = Callable[[torch.Tensor], torch.Tensor]  # a choice of kept classes -> rounded, one per tensor


def bisect_cut(cost: Callable[[int], float], n_max: int, goal: float) -> tuple[int, int]:
    """``(lo, hi)`` in [0, n_max] with ``cost(lo) > goal >= cost(hi)`` and
    ``hi - lo == 1``, for a cost that falls as more ranked channels are
    dropped (``lo == hi`` where the goal is outside the cost's range)."""
    if cost(0) <= goal:
        return 0, 0
    if cost(n_max) > goal:
        return n_max, n_max
    lo, hi = 0, n_max
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(mid) > goal:
            lo = mid
        else:
            hi = mid
    return lo, hi


class FlopsSearch:
    """Kept-channel masks whose predicted FLOPs come closest to a goal.

    First the ranking's cut (:func:`bisect_cut`), which keeps the ranking's
    order exactly. With ``round_to`` a cut can step far (one channel less in
    a wide residual stream drops ``round_to`` of them, in every layer the
    stream feeds), so where the cut misses, :meth:`_refine` starts from the
    cut above the goal and drops one rounding block at a time, the block of
    lowest-ranked channels among the blocks that do not overshoot the goal.
    """

    def __init__(self, state: CompileState, ranking: Ranking, finish: Finish, model: FlopsModel | None = None):
        self.state, self.ranking, self.finish = state, ranking, finish
        self.model = model or FlopsModel.build(state.graph, state.channels, state.example_inputs)
        self.n_max = int(ranking.order.numel())
        self._costs: dict[int, float] = {}
        num = state.channels.num_classes
        self.rank = torch.full((num,), self.n_max, dtype=torch.int64)
        self.rank[ranking.order] = torch.arange(self.n_max)
        self.droppable = torch.zeros(num, dtype=torch.bool)
        self.droppable[ranking.order] = True

    @property
    def dense(self) -> int:
        return self.model.dense

    def predict(self, class_kept: torch.Tensor) -> float:
        return self.model.predict(class_kept)

    def kept_for(self, n_drop: int) -> torch.Tensor:
        return self.finish(self.ranking.keep(n_drop))

    def cost(self, n_drop: int) -> float:
        if n_drop not in self._costs:
            self._costs[n_drop] = self.predict(self.kept_for(n_drop))
        return self._costs[n_drop]

    @property
    def floor(self) -> torch.Tensor:
        """The mask that prunes as far as allowed."""
        return self.kept_for(self.n_max)

    def kept_at(self, goal: float) -> torch.Tensor:
        lo, hi = bisect_cut(self.cost, self.n_max, goal)
        found = [(abs(self.cost(n) - goal), self.kept_for(n)) for n in dict.fromkeys((lo, hi))]
        best = min(found, key=lambda f: f[0])
        if lo != hi and best[0] > FLOPS_TOLERANCE * goal:
            refined = self._refine(self.kept_for(lo), goal)
            found.append((abs(self.predict(refined) - goal), refined))
        return min(found, key=lambda f: f[0])[1]

    def _refine(self, kept: torch.Tensor, goal: float, max_moves: int = 64) -> torch.Tensor:
        round_to = self.state.config.round_to
        groups = [g.classes for g in self.state.groups]
        kept = kept.clone()
        for _ in range(max_moves):
            cost = self.predict(kept)
            excess = cost - goal
            if excess <= FLOPS_TOLERANCE * goal:
                break
            best: tuple[float, torch.Tensor] | None = None
            for classes in groups:
                count = int(kept[classes].sum())
                free = classes[kept[classes] & self.droppable[classes]]
                need = count - ((count - 1) // round_to) * round_to  # down to the next multiple
                if count == 0 or need > free.numel():
                    continue
                block = free[torch.argsort(self.rank[free])[:need]]
                trial = kept.clone()
                trial[block] = False
                saved = cost - self.predict(trial)
                if saved <= 0 or excess - saved < -FLOPS_TOLERANCE * goal:
                    continue
                rank = float(self.rank[block].double().mean())
                if best is None or rank < best[0]:
                    best = (rank, trial)
            if best is None:
                break
            kept = best[1]
        return self.finish(kept)


def ranked_dropped(search: FlopsSearch, kept: torch.Tensor) -> int:
    return int((~kept[search.ranking.order]).sum())


def fit_flops(state: CompileState, ranking: Ranking, finish: Finish, target: float, build: Build) -> BudgetResult:
    """Kept classes whose compact model has ``target`` x the dense FLOPs
    (within :data:`FLOPS_TOLERANCE` where the channel steps allow). Where the
    FLOPs model was built by running the graph (matrix products it has no
    formula for), the choice is confirmed by a real count of the model
    ``build`` makes; where the two disagree, the goal is shifted by the
    difference and searched again. Built from shapes, the model's count is
    the counter's own arithmetic, and what the measure pass reports."""
    from .trade import Trade, trade_notes  # (trade builds on this module)

    search = FlopsSearch(state, ranking, finish)
    trade = Trade.of(state, search, target, None) if state.config.trade_flops else None
    if trade is not None:
        search = trade.search
    goal = target * search.dense
    tried: list[tuple[torch.Tensor, int]] = []
    offset = 0.0  # what the model misses: real - predicted, at the last confirmed mask
    for _ in range(FLOPS_CONFIRMATIONS):
        kept = search.kept_at(goal - offset)
        if any(torch.equal(kept, k) for k, _ in tried):
            break
        # from shapes, the model's prediction is the count (the measure pass's); else count a built model
        real = round(search.predict(kept)) if search.model.from_shapes else \
            count_flops(build(kept), state.example_inputs)
        tried.append((kept, real))
        real = tried[-1][1]
        if abs(real - goal) <= FLOPS_TOLERANCE * goal:
            break
        offset = real - search.predict(kept)
        if abs(offset) <= FLOPS_TOLERANCE * goal:
            break  # the model is right: the channel steps keep the target out of reach
    kept, real = min(tried, key=lambda t: abs(t[1] - goal))
    achieved = real / search.dense if search.dense else 1.0
    dropped = ranked_dropped(search, kept)
    result = BudgetResult("flops", target, achieved, achieved, search.dense, search.predict(kept), dropped,
                          search.n_max, kept, flops_confirmed=None if search.model.from_shapes else real)
    if abs(achieved - target) <= 0.02 * target:
        result.notes.append(f"target_flops {target:g}: the compact model has {achieved:.4f} of the dense FLOPs "
                            f"({dropped} of {search.n_max} ranked channels dropped)")
    elif achieved > target and torch.equal(kept, search.floor):
        result.notes.append(
            f"target_flops {target:g} cannot be reached: pruned as far as allowed, the compact model keeps "
            f"{achieved:.4f} of the dense FLOPs, the best reachable fraction ({why_limited(state)})"
        )
    else:
        result.notes.append(
            f"target_flops {target:g} missed: the closest cut found keeps {achieved:.4f} of the dense FLOPs "
            f"(channels come off in steps too coarse to get within 2 %; {why_limited(state)})"
        )
    trade_notes(state, trade, result, "flops")
    return result
