"""Select pass: scores and groups become a :class:`~graphprune.plan.PruningPlan`.

Modes (see :class:`~graphprune.config.PruneConfig`):

- ``per_layer`` (the paper): each producing layer keeps its own top
  ``1 - ratio`` filters; layers writing the same coupled channel combine their
  choices by union (kept if any keeps it: lossless) or intersection (kept only
  if all keep it: the paper's ablation). The masked model zeroes each layer's
  own dropped filters.
- ``group``: one aggregated score per coupled channel; each group keeps its top
  ``1 - ratio``.
- ``global``: scores normalised per group, one ranking across all groups;
  the cut is ``ratio`` of the prunable channels, or, with ``target_flops`` /
  ``target_latency``, wherever :mod:`graphprune.budget` finds the target met.

Pinned channels are always kept and count toward what a layer keeps; every
group keeps ``min_channels``; ``round_to`` rounds each group's kept count up.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import budget
from ..analysis import ChannelGraph
from ..config import PruneConfig
from ..errors import PipelineError
from ..pipeline import CompileState, Pass
from ..plan import PruningPlan


def keep_count(n: int, ratio: float, min_channels: int) -> int:
    """Channels kept of ``n`` at ``ratio``: ceil((1 - ratio) n), at least min."""
    dropped = math.floor(round(ratio * n, 6))
    return min(n, max(min_channels, n - dropped))


def top_keep(scores: torch.Tensor, pinned: torch.Tensor, count: int) -> torch.Tensor:
    """Keep the pinned entries plus the best-scored others, ``count`` in all."""
    keep = pinned.clone()
    extra = count - int(pinned.sum())
    if extra > 0:
        free = (~pinned).nonzero().flatten()
        order = torch.argsort(scores[free], descending=True, stable=True)
        keep[free[order[:extra]]] = True
    return keep


def ratio_for(config: PruneConfig, module: str) -> float:
    for pattern, ratio in dict(config.ratios).items():
        if module == pattern or fnmatch.fnmatchcase(module, pattern):
            return float(ratio)
    return config.ratio


def class_scores(state: CompileState) -> torch.Tensor:
    """One score per class: mean over the layers writing it of each layer's
    scores divided by that layer's mean score (so layers of different scale
    weigh alike)."""
    channels = state.channels
    total = torch.zeros(channels.num_classes, dtype=torch.float64)
    count = torch.zeros(channels.num_classes, dtype=torch.float64)
    for p in channels.producers:
        s = state.scores[p.weight].double()
        s = s / s.abs().mean().clamp_min(1e-12)
        cls = channels.class_of[p.ids]
        total.index_add_(0, cls, s)
        count.index_add_(0, cls, torch.ones_like(s))
    return total / count.clamp_min(1)


def common_reasons(channels: ChannelGraph, count: int = 3) -> list[str]:
    """The reasons that pin the most coupled channels, most first (one per
    kind of cause: reasons that differ only in the node they name are one)."""
    def kind(reason: str) -> str:
        return re.sub(r"\(node [^)]*\)|'[^']*'", "", reason)

    # of the produced channels (what could have been pruned); of all, where none is
    produced = torch.cat([p.ids for p in channels.producers]) if channels.producers else torch.empty(0, dtype=torch.long)
    index = channels.reason_of[channels.class_of[produced]]
    index = index[index > 0] if bool((index > 0).any()) else channels.reason_of[channels.reason_of > 0]
    totals: dict[str, int] = {}
    for i, n in enumerate(torch.bincount(index, minlength=len(channels.reasons)).tolist()):
        if n:
            totals[kind(channels.reasons[i])] = totals.get(kind(channels.reasons[i]), 0) + n
    firsts = {kind(channels.reasons[i]): channels.reasons[i] for i in range(len(channels.reasons) - 1, 0, -1)}
    return [firsts[k] for k in sorted(totals, key=lambda k: -totals[k])[:count]]


def nothing_pruned(plan: PruningPlan, config: PruneConfig) -> str | None:
    """Why the plan drops no channel, if it drops none: the model is returned
    as it is (same size), and the user must be told, not left to guess."""
    if plan.channels_after < plan.channels_before:
        return None
    if bool(plan.raw_dropped.any()):
        return ("no channel removed: layers zeroed their own choice of filters, but every coupled channel "
                "is kept by another layer writing it, so the compact model is the masked one at full size")
    if not plan.channels.producers:
        return ("nothing to prune: the model has no convolution or linear layer graphprune can slice "
                "(the compact model is the input model, unchanged)")
    if not any(g.prunable for g in plan.groups):
        return ("nothing to prune: every channel is pinned (" + "; ".join(common_reasons(plan.channels)) + "), "
                "so the compact model is the input model, unchanged; see the plan for each group")
    if config.ratio == 0 and not config.ratios:
        return "nothing pruned: ratio is 0 (the compact model is the input model, unchanged)"
    return (f"nothing pruned: at ratio {config.ratio} every group keeps all its channels "
            "(groups too small, or min_channels / round_to keep them); raise the ratio")


def per_layer_kept(state: CompileState, raw_override: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """per_layer mode (the paper): each producing layer keeps its own top
    ``1 - ratio`` filters; the classes kept, and each layer's own dropped filters
    appended to ``raw_override``. Where layers write the same coupled channel,
    union keeps it if any layer keeps it (a sum is zero only if every addend
    is: lossless), intersection only if all do (the paper's ablation). A layer
    whose channels reach that coupled channel only as a gate (an SE block's
    last layer, after its sigmoid: a factor that is never zero) does not
    decide it: the product is zero where the gated layer drops its channel,
    whatever the gate keeps, so keeping it there would only keep the gate."""
    config, channels = state.config, state.channels
    pinned = channels.pinned
    any_keep = torch.zeros_like(pinned)
    any_drop = torch.zeros_like(pinned)
    decided = torch.zeros_like(pinned)  # a class some deciding layer voted on
    gate_keep = torch.zeros_like(pinned)  # votes of gates, for a class no other layer decides
    gated = channels.gated
    for p in channels.producers:
        cls = channels.class_of[p.ids]
        unique, inverse = torch.unique(cls, return_inverse=True)
        row = state.scores[p.weight].double()
        per_class = torch.zeros(unique.numel(), dtype=torch.float64).index_add_(0, inverse, row)
        per_class /= torch.bincount(inverse, minlength=unique.numel()).double()
        n_keep = keep_count(unique.numel(), ratio_for(config, p.name), config.min_channels)
        keep = top_keep(per_class, pinned[unique], n_keep)
        raw_override.append((p.ids, ~keep[inverse]))
        if gated is not None:
            gates = torch.zeros(unique.numel(), dtype=torch.bool).index_fill_(0, inverse[gated[p.ids]], True)
            gate_keep[unique[keep & gates]] = True
            unique, keep = unique[~gates], keep[~gates]
        decided[unique] = True
        any_keep[unique[keep]] = True
        any_drop[unique[~keep]] = True
    any_keep |= gate_keep & ~decided
    if config.coupling == "union":
        return any_keep
    return any_keep & ~any_drop


class SelectPass:
    name = "select"
    requires = ("channels", "groups", "scores")
    provides = ("plan",)

    def __init__(self, latency: budget.LatencySearch | None = None, rewrite: Pass | None = None):
        """``latency``: how a ``target_latency`` search times its candidates;
        ``rewrite``: the pass that builds a budget search's candidate models
        (default: the running pipeline's ``rewrite`` pass, so a candidate is
        exactly what the compile would produce)."""
        self.latency = latency or budget.LatencySearch()
        self.rewrite = rewrite

    def __call__(self, state: CompileState) -> None:
        config, channels = state.config, state.channels
        pinned = channels.pinned
        scores = class_scores(state)
        class_kept = pinned.clone()
        raw_override: list[tuple[torch.Tensor, torch.Tensor]] = []
        notes: list[str] = []

        if config.mode == "per_layer":
            class_kept |= per_layer_kept(state, raw_override)
        elif config.mode == "group":
            for g in state.groups:
                ratio = min(ratio_for(config, name) for name in g.producers)
                n_keep = keep_count(g.size, ratio, config.min_channels)
                class_kept[g.classes] = top_keep(scores[g.classes], g.pinned, n_keep)
        else:
            class_kept = self._global(state, scores, notes)

        before_rounding = class_kept.clone()
        if config.mode != "global":  # global mode costs its candidates finished
            finish(state, scores, class_kept)

        raw_dropped = ~class_kept[channels.class_of]
        for raw, dropped in raw_override:
            # union: a dropped class is dropped in every layer, its gate's too (any other
            # coupling keeps each layer's own choice: intersection is the paper's ablation)
            raw_dropped[raw] = dropped | raw_dropped[raw] if config.coupling == "union" else dropped
        # Channels added back by rounding are kept whole, not masked; channels
        # rounding took away are dropped in every layer.
        added = class_kept & ~before_rounding
        raw_dropped &= ~added[channels.class_of]
        raw_dropped |= (before_rounding & ~class_kept)[channels.class_of]
        state.plan = PruningPlan(channels, state.groups, class_kept, raw_dropped, config.mode, config.coupling)
        state.plan.notes.extend(notes)
        note = nothing_pruned(state.plan, config)
        if note:
            state.plan.notes.append(note)

    def _global(self, state: CompileState, scores: torch.Tensor, notes: list[str]) -> torch.Tensor:
        """Global mode's kept classes, finished: the ranking cut at ``ratio``
        of the prunable channels, or where the FLOPs or latency target is met."""
        config = state.config
        ranking = GlobalRanking.of(state, scores)

        def finished(class_kept: torch.Tensor) -> torch.Tensor:
            finish(state, scores, class_kept)
            return class_kept

        if config.target_flops is None and config.target_latency is None:
            prunable = sum(g.prunable for g in state.groups)
            return finished(ranking.keep(min(ranking.size, math.floor(round(config.ratio * prunable, 6)))))
        build = self.candidate_builder(state)
        if config.target_flops is not None:
            result = budget.fit_flops(state, ranking, finished, config.target_flops, build)
        else:
            result = budget.fit_latency(state, ranking, finished, config.target_latency, build, self.latency)
        state.budget = result
        notes.extend(result.notes)
        return result.class_kept

    def candidate_builder(self, state: CompileState) -> budget.Build:
        """Kept classes -> the compact model that keeps them, built by the rewrite pass."""
        rewrite = self.rewrite
        if rewrite is None and state.pipeline is not None and "rewrite" in state.pipeline.names:
            rewrite = state.pipeline.get("rewrite")
        if rewrite is None or not hasattr(rewrite, "build"):
            raise PipelineError("a FLOPs or latency target builds candidate models with the pipeline's 'rewrite' "
                                "pass; run select in a pipeline that has one, or pass SelectPass(rewrite=...)")

        def build(class_kept: torch.Tensor) -> nn.Module:
            raw_dropped = ~class_kept[state.channels.class_of]
            plan = PruningPlan(state.channels, state.groups, class_kept, raw_dropped, state.config.mode,
                               state.config.coupling)
            return rewrite.build(state, plan)

        return build


@dataclass
class GlobalRanking(budget.Ranking):
    """Global mode's one ranking across groups: ``protected`` classes are
    always kept (pinned, plus each group's best ``min_channels``); ``order``
    lists the others, lowest score (``scores``: normalised per group) first."""

    @classmethod
    def of(cls, state: CompileState, scores: torch.Tensor) -> GlobalRanking:
        config = state.config
        protected = state.channels.pinned.clone()
        normalised = scores.clone()
        for g in state.groups:
            free = g.classes[~g.pinned]
            if free.numel():
                normalised[free] = scores[free] / scores[free].abs().mean().clamp_min(1e-12)
            need = config.min_channels - int(g.pinned.sum())
            if need > 0 and free.numel():
                best = free[torch.argsort(scores[free], descending=True, stable=True)[:need]]
                protected[best] = True
        candidates = torch.cat([g.classes for g in state.groups]) if state.groups else torch.empty(0, dtype=torch.int64)
        candidates = candidates[~protected[candidates]]
        return cls(protected, candidates[torch.argsort(normalised[candidates], stable=True)], normalised)


def finish(state: CompileState, scores: torch.Tensor, class_kept: torch.Tensor) -> None:
    """What every mode's choice goes through, in place: each group's kept count
    rounded to the nearest multiple of ``round_to`` (toward what was chosen,
    so rounding neither loses the budget nor gives it away; at least the
    multiple that holds ``min_channels`` and the pinned channels, at most the
    group; a group of two multiples or less rounds to half as much, so that
    rounding does not keep all of it; a group that layers read in pieces,
    each piece on its own), then one channel kept in every tensor."""
    config = state.config
    for g in state.groups:
        # where layers read the group in pieces, each piece is what a layer sees: round each
        for part in (g.parts if config.round_to > 1 else None) or [None]:
            classes, pinned = (g.classes, g.pinned) if part is None else (g.classes[part], g.pinned[part])
            least = config.min_channels if part is None else 1
            class_kept[classes] = rounded(class_kept[classes], scores[classes], pinned, config.round_to, least)
    keep_one_per_slot(state.channels, scores, class_kept)


def rounded(kept: torch.Tensor, scores: torch.Tensor, pinned: torch.Tensor, step: int, least: int) -> torch.Tensor:
    """``kept`` with its count rounded to the nearest multiple of ``step`` (see :func:`finish`)."""
    count, size = int(kept.sum()), kept.numel()
    while step > 1 and size < 2 * step:  # two blocks or less: rounding to a block would keep all
        step //= 2
    lowest = math.ceil(max(least, int(pinned.sum()), 1) / step) * step
    target = min(size, max(lowest, step * math.floor(count / step + 0.5)))
    if target > count:
        return top_keep(scores, kept, target)
    if target < count:  # keep the pinned and the best of the others
        return top_keep(torch.where(kept, scores, -math.inf), pinned, target)
    return kept


def keep_one_per_slot(channels: ChannelGraph, scores: torch.Tensor, class_kept: torch.Tensor) -> None:
    """No parameter may lose every index (a split piece whose channels were
    all dropped would leave a conv with no input), and no tensor in the
    graph may lose every channel (an empty piece of a split that a literal
    ``view`` reshapes, or that no layer reads): keep its best channel."""
    raws, classes, owner = channels.tensor_classes
    if not raws:
        return
    # which tensors keep nothing, all at once
    kept = torch.zeros(len(raws), dtype=torch.int64).index_add_(0, owner, class_kept[classes].long())
    for i in (kept == 0).nonzero().flatten().tolist():
        cls = channels.class_of[raws[i]]
        if not bool(class_kept[cls].any()):  # (a channel kept for an earlier one may serve this one)
            class_kept[cls[torch.argmax(scores[cls])]] = True
