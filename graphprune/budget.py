"""Pruning to a budget: where to cut global mode's ranking to meet a FLOPs or latency target.

Global mode ranks every prunable coupled channel once, lowest normalised
score first; pruning to a budget is choosing *how many* of them to drop.

- **FLOPs** (``target_flops``): a :class:`FlopsModel` predicts the compact
  model's FLOPs from a kept-channel mask without building it. A conv's or
  linear's FLOPs are proportional to the number of elements of its weight
  (``torch.utils.flop_counter`` counts ``2 * batch * weight.numel() * output
  positions``), and the rewrite slices each weight dimension to the kept
  channels of its slot, so a node's compact FLOPs are its dense FLOPs times the
  kept fraction of every channel-indexed dimension of its weight. That covers
  depthwise and grouped convs too (their weight dims are slotted per channel and
  per group position). FLOPs no weight scales (a matmul of two activations) are
  held constant. :class:`FlopsSearch` bisects the number of ranked channels
  to drop on the prediction and, where ``round_to`` makes one step of the cut
  too coarse, drops single rounding blocks from the cut just above the goal.
  :func:`fit_flops` confirms the choice with the real count (the compact model
  built by the default pipeline's rewrite pass, counted as the
  measure pass counts it) and, if the two disagree, shifts the goal by what
  the model missed and searches again.
- **Latency** (``target_latency``): :func:`fit_latency` searches a FLOPs
  fraction whose compact model, exported to ONNX and timed on ONNX Runtime,
  takes the target fraction of the dense model's time. Each candidate is
  timed in interleaved rounds with the dense model (medians), so a load
  change on the machine hits both; the FLOPs search is the inner loop.

Both respect what the ranking respects (pinned and ignored channels,
``min_channels``) and what the select pass does after the cut (``round_to``,
one channel per tensor): every candidate cut is finished by the select pass's
own rules before it is costed. A target that cannot be reached is pruned as
far as allowed and says so in the notes.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from .passes.rewrite import RewritePass
from .pipeline import CompileState
from .tensors import fresh_copy, get_tensor

#: relative distance to a FLOPs target that counts as met (|achieved - target| <= this * target)
FLOPS_TOLERANCE = 0.01
#: real counts used to confirm (and correct) the FLOPs model's choice
FLOPS_CONFIRMATIONS = 3


# -- the FLOPs model ------------------------------------------------------------


class _NodeFlops(fx.Interpreter):
    """Runs the graph once under one FlopCounterMode, noting what each node adds."""

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode):
        super().__init__(gm)
        self.counter = counter
        self.flops: dict[fx.Node, int] = {}

    def run_node(self, n: fx.Node) -> Any:
        before = self.counter.get_total_flops()
        result = super().run_node(n)
        added = self.counter.get_total_flops() - before
        if added:
            self.flops[n] = added
        return result


def _tensors_read(gm: fx.GraphModule, node: fx.Node) -> list[str]:
    """Qualified names of the parameters and buffers a node reads."""
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        prefix = f"{node.target}." if node.target else ""
        named = list(module.named_parameters()) + list(module.named_buffers())
        return [prefix + name for name, _ in named]
    leaves = tree_leaves((node.args, node.kwargs))
    return [str(a.target) for a in leaves if isinstance(a, fx.Node) and a.op == "get_attr"]


@dataclass
class FlopsModel:
    """Compact-model FLOPs as a function of which coupled channels are kept.

    ``dense`` is the dense graph's count at the example inputs; ``fixed`` the
    part of it no slotted weight scales. Each *term* is one node's FLOPs,
    scaled by the product of the kept fractions of the slots (weight
    dimensions) listed for it in ``term_slots`` (-1: no slot, factor 1).
    """

    dense: int
    fixed: int
    term_flops: torch.Tensor  # float64 (T,)
    term_slots: torch.Tensor  # int64 (T, D), -1 padded
    slot_classes: torch.Tensor  # class of every index of every slot, concatenated
    slot_index: torch.Tensor  # which slot each entry of slot_classes belongs to
    slot_sizes: torch.Tensor  # float64 (S,)

    @classmethod
    def build(cls, state: CompileState) -> FlopsModel:
        gm, channels = state.graph, state.channels
        counter = FlopCounterMode(display=False)
        runner = _NodeFlops(gm, counter)
        with torch.no_grad(), counter:
            runner.run(*fresh_copy(state.example_inputs))
        dense = int(counter.get_total_flops())

        slots_of: dict[str, list[int]] = {}
        for i, slot in enumerate(channels.slots):
            slots_of.setdefault(slot.target, []).append(i)
        terms: list[tuple[int, list[int]]] = []
        fixed = 0
        for node, flops in runner.flops.items():
            slotted = [t for t in _tensors_read(gm, node) if t in slots_of]
            if not slotted:
                fixed += flops
                continue
            # the weight: the biggest tensor the node reads (a bias is slotted too)
            weight = max(slotted, key=lambda t: get_tensor(gm, t).numel())
            terms.append((flops, slots_of[weight]))

        width = max((len(s) for _, s in terms), default=1)
        term_slots = torch.full((len(terms), width), -1, dtype=torch.int64)
        for row, (_, slots) in enumerate(terms):
            term_slots[row, : len(slots)] = torch.tensor(slots, dtype=torch.int64)
        slot_classes = [channels.class_of[s.ids] for s in channels.slots]
        return cls(
            dense=dense,
            fixed=fixed,
            term_flops=torch.tensor([float(f) for f, _ in terms], dtype=torch.float64),
            term_slots=term_slots,
            slot_classes=torch.cat(slot_classes) if slot_classes else torch.empty(0, dtype=torch.int64),
            slot_index=torch.repeat_interleave(
                torch.arange(len(slot_classes)), torch.tensor([c.numel() for c in slot_classes], dtype=torch.int64)
            ),
            slot_sizes=torch.tensor([float(c.numel()) for c in slot_classes], dtype=torch.float64),
        )

    def predict(self, class_kept: torch.Tensor) -> float:
        """FLOPs of the compact model that keeps ``class_kept``."""
        kept = torch.zeros(self.slot_sizes.numel() + 1, dtype=torch.float64)
        kept[:-1].index_add_(0, self.slot_index, class_kept[self.slot_classes].double())
        fraction = kept[:-1] / self.slot_sizes.clamp_min(1)
        fraction = torch.cat([fraction, torch.ones(1, dtype=torch.float64)])  # index -1: factor 1
        scale = fraction[self.term_slots].prod(dim=1)
        return self.fixed + float((self.term_flops * scale).sum())


# -- building a candidate -------------------------------------------------------


def compact_for(state: CompileState, class_kept: torch.Tensor) -> fx.GraphModule:
    """The compact model that keeps ``class_kept``, built by the default
    pipeline's own rewrite pass on a scratch copy of the state (so the
    candidate is exactly what the compile would produce; folding biases
    changes no FLOPs)."""
    from .plan import PruningPlan

    channels = state.channels
    raw_dropped = ~class_kept[channels.class_of]
    plan = PruningPlan(channels, state.groups, class_kept, raw_dropped, state.config.mode, state.config.coupling)
    scratch = CompileState(
        model=state.model, example_inputs=state.example_inputs, config=state.config, graph=state.graph,
        frontend=state.frontend, channels=channels, groups=state.groups, scores=state.scores, plan=plan,
        extras=copy.copy(state.extras),
    )
    RewritePass()(scratch)
    return scratch.compact


# -- the search -----------------------------------------------------------------


class Ranking(Protocol):
    """Global mode's ranking, as the select pass builds it: ``protected``
    classes are always kept, ``order`` lists the others, first to drop first."""

    protected: torch.Tensor
    order: torch.Tensor

    def keep(self, n_drop: int) -> torch.Tensor: ...


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
        self.model = model or FlopsModel.build(state)
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


def real_flops(state: CompileState, class_kept: torch.Tensor) -> int:
    from .passes.measure import count_flops

    return count_flops(compact_for(state, class_kept), state.example_inputs)


@dataclass
class Cut:
    """The kept classes a budget chose (finished: rounded, one per tensor),
    with what to record about them."""

    class_kept: torch.Tensor
    notes: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)


def _why_limited(state: CompileState) -> str:
    config = state.config
    parts = [f"{state.channels.prunable_fraction:.0%} of produced channels are prunable"]
    if config.ignore:
        parts.append(f"ignore={list(config.ignore)}")
    if config.min_channels > 1:
        parts.append(f"min_channels={config.min_channels}")
    if config.round_to > 1:
        parts.append(f"round_to={config.round_to}")
    return ", ".join(parts)


def _ranked_dropped(search: FlopsSearch, kept: torch.Tensor) -> int:
    return int((~kept[search.ranking.order]).sum())


def fit_flops(state: CompileState, ranking: Ranking, finish: Finish, target: float) -> Cut:
    """Kept classes whose compact model has ``target`` x the dense FLOPs
    (within :data:`FLOPS_TOLERANCE` where the channel steps allow), confirmed
    by a real count; where the model and the count disagree, the goal is
    shifted by the difference and searched again."""
    search = FlopsSearch(state, ranking, finish)
    goal = target * search.dense
    tried: list[tuple[torch.Tensor, int]] = []
    offset = 0.0  # what the model misses: real - predicted, at the last confirmed mask
    for _ in range(FLOPS_CONFIRMATIONS):
        kept = search.kept_at(goal - offset)
        if any(torch.equal(kept, k) for k, _ in tried):
            break
        tried.append((kept, real_flops(state, kept)))
        real = tried[-1][1]
        if abs(real - goal) <= FLOPS_TOLERANCE * goal:
            break
        offset = real - search.predict(kept)
        if abs(offset) <= FLOPS_TOLERANCE * goal:
            break  # the model is right: the channel steps keep the target out of reach
    kept, real = min(tried, key=lambda t: abs(t[1] - goal))
    achieved = real / search.dense if search.dense else 1.0
    dropped = _ranked_dropped(search, kept)
    cut = Cut(kept, measurements={
        "target_flops": target, "flops_fraction": achieved, "flops_dense": search.dense,
        "flops_predicted": search.predict(kept), "flops_confirmed": real,
        "ranked_dropped": dropped, "ranked": search.n_max,
    })
    if abs(achieved - target) <= 0.02 * target:
        cut.notes.append(f"target_flops {target:g}: the compact model has {achieved:.4f} of the dense FLOPs "
                         f"({dropped} of {search.n_max} ranked channels dropped)")
    elif achieved > target and torch.equal(kept, search.floor):
        cut.notes.append(
            f"target_flops {target:g} cannot be reached: pruned as far as allowed, the compact model keeps "
            f"{achieved:.4f} of the dense FLOPs, the best reachable fraction ({_why_limited(state)})"
        )
    else:
        cut.notes.append(
            f"target_flops {target:g} missed: the closest cut found keeps {achieved:.4f} of the dense FLOPs "
            f"(channels come off in steps too coarse to get within 2 %; {_why_limited(state)})"
        )
    return cut


# -- latency ----------------------------------------------------------------------


@dataclass(frozen=True)
class LatencySearch:
    """How :func:`fit_latency` measures.

    Each candidate is timed ``rounds`` times, alternating with the dense
    model, ``runs`` runs a round; the latency is the median of the round
    medians. ``candidates`` caps the models exported and timed; the search
    stops earlier once within ``tolerance`` (relative) of the target.
    ``exporter`` is tried first for the dense model and then used for every
    candidate: ``legacy`` exports in a fraction of the dynamo exporter's time,
    and dense and compact are always exported alike, so the ratio is fair.
    """

    runs: int = 10
    rounds: int = 3
    warmup: int = 2
    candidates: int = 5
    tolerance: float = 0.05
    threads: int | None = None
    exporter: str = "legacy"


@dataclass
class _Timing:
    class_kept: torch.Tensor
    flops_fraction: float
    dense_ms: float
    compact_ms: float

    @property
    def fraction(self) -> float:
        return self.compact_ms / self.dense_ms


class _Timer:
    """Exports candidates to ONNX in a temporary folder and times them against the dense model."""

    def __init__(self, state: CompileState, folder: Path, search: LatencySearch):
        from .errors import ExportError
        from .export import export_onnx
        from .latency import open_session

        self.state, self.folder, self.search = state, folder, search
        self.export_onnx, self.open_session = export_onnx, open_session
        self.exporter = search.exporter
        try:
            dense = self._export(state.graph, "dense")
        except ExportError:
            if self.exporter == "auto":
                raise
            self.exporter = "auto"
            dense = self._export(state.graph, "dense")
        self.dense = open_session(dense, threads=search.threads)

    def _export(self, model: torch.nn.Module, name: str) -> Path:
        path = self.folder / f"{name}.onnx"
        self.export_onnx(model, self.state.example_inputs, path, dynamic_batch=False, exporter=self.exporter,
                         tolerance=max(self.state.config.tolerance, 1e-4))
        return path

    def __call__(self, class_kept: torch.Tensor, flops_fraction: float) -> _Timing:
        from .latency import measure_latency

        path = self._export(compact_for(self.state, class_kept), "compact")
        compact = self.open_session(path, threads=self.search.threads)
        s, x = self.search, self.state.example_inputs
        dense_ms, compact_ms = [], []
        for _ in range(s.rounds):
            dense_ms.append(measure_latency(self.dense, x, warmup=s.warmup, runs=s.runs).median_ms)
            compact_ms.append(measure_latency(compact, x, warmup=s.warmup, runs=s.runs).median_ms)
        del compact
        path.unlink(missing_ok=True)
        return _Timing(class_kept, flops_fraction, statistics.median(dense_ms), statistics.median(compact_ms))


def _next_flops_fraction(timings: list[_Timing], target: float, floor: float) -> float:
    """Where to look next: between the nearest measured points on either side
    of the target (the dense model is the point (1, 1)), else extrapolated
    along the line from the dense model."""
    points = [(1.0, 1.0)] + [(t.flops_fraction, t.fraction) for t in timings]
    above = [p for p in points if p[1] > target]
    below = [p for p in points if p[1] <= target]
    hi = min(above, key=lambda p: p[0]) if above else (1.0, 1.0)
    if below:
        lo = max(below, key=lambda p: p[0])
        if hi[1] == lo[1]:
            return (lo[0] + hi[0]) / 2
        guess = lo[0] + (target - lo[1]) * (hi[0] - lo[0]) / (hi[1] - lo[1])
        return min(max(guess, min(lo[0], hi[0])), max(lo[0], hi[0]))
    slope_points = sorted(above, key=lambda p: p[0])[:2]
    (f0, g0), (f1, g1) = slope_points if len(slope_points) == 2 else (hi, (1.0, 1.0))
    if g1 - g0 <= 1e-9 or f1 - f0 <= 1e-9:
        guess = f0 * target / g0  # no usable slope: assume latency proportional to FLOPs
    else:
        guess = f0 + (target - g0) * (f1 - f0) / (g1 - g0)
    return max(guess, floor)


def fit_latency(state: CompileState, ranking: Ranking, finish: Finish, target: float,
                search: LatencySearch | None = None) -> Cut:
    """Kept classes whose compact model, on ONNX Runtime, takes ``target`` x
    the dense model's time: a search over FLOPs fractions (each one a
    :class:`FlopsSearch`), at most ``search.candidates`` models measured."""
    search = search or LatencySearch()
    flops = FlopsSearch(state, ranking, finish)
    dense = flops.dense or 1
    floor_kept = flops.floor
    floor = flops.predict(floor_kept) / dense
    timings: list[_Timing] = []
    with tempfile.TemporaryDirectory(prefix="graphprune-latency-") as tmp:
        timer = _Timer(state, Path(tmp), search)
        want = max(target, floor)  # first guess: latency proportional to FLOPs
        for _ in range(search.candidates):
            kept = flops.kept_at(want * dense)
            if any(torch.equal(kept, t.class_kept) for t in timings):
                break  # the search has come back to a model it has timed
            timings.append(timer(kept, flops.predict(kept) / dense))
            if abs(timings[-1].fraction - target) <= search.tolerance * target:
                break
            if timings[-1].fraction > target and torch.equal(kept, floor_kept):
                break  # as far as pruning goes
            want = _next_flops_fraction(timings, target, floor)
        threads = timer.dense.get_session_options().intra_op_num_threads or None
    best = min(timings, key=lambda t: abs(t.fraction - target))
    how = (f"medians of {search.rounds} rounds of {search.runs} runs interleaved with the dense model, "
           f"ONNX Runtime CPU, {threads or 'default'} threads; latency on a shared machine is noisy")
    dropped = _ranked_dropped(flops, best.class_kept)
    cut = Cut(best.class_kept, measurements={
        "target_latency": target, "latency_fraction": best.fraction,
        "latency_dense_ms": best.dense_ms, "latency_compact_ms": best.compact_ms,
        "latency_flops_fraction": best.flops_fraction, "ranked_dropped": dropped, "ranked": flops.n_max,
        "latency_candidates": [
            {"flops_fraction": t.flops_fraction, "dense_ms": t.dense_ms, "compact_ms": t.compact_ms,
             "latency_fraction": t.fraction} for t in timings
        ],
        "latency_method": how,
    })
    summary = (f"dense {best.dense_ms:.3f} ms -> compact {best.compact_ms:.3f} ms = {best.fraction:.3f} of dense "
               f"at {best.flops_fraction:.3f} of the dense FLOPs; best of {len(timings)} measured candidates, {how}")
    if abs(best.fraction - target) <= search.tolerance * target:
        cut.notes.append(f"target_latency {target:g} met: {summary}")
    elif best.fraction > target and torch.equal(best.class_kept, floor_kept):
        cut.notes.append(f"target_latency {target:g} cannot be reached: pruned as far as allowed "
                         f"({_why_limited(state)}); {summary}")
    else:
        cut.notes.append(f"target_latency {target:g} not met within {search.tolerance:.0%}: closest {summary}")
    return cut
