"""Pruning to a latency target: FLOPs searches timed on ONNX Runtime (see :mod:`graphprune.budget`)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .flops_search import Finish, FlopsSearch, Ranking, ranked_dropped
from .result import BudgetResult, Build, why_limited
from .trade import Trade, trade_notes

if TYPE_CHECKING:
    from ..pipeline import CompileState


@dataclass(frozen=True)
class LatencySearch:
    """How :func:`fit_latency` measures.

    Each candidate is timed in rounds alternating with the dense model
    (:func:`graphprune.onnx_latency.compare_latency`): by default adaptively,
    until both medians are stable (``runs=None``); else ``rounds`` rounds of
    ``runs`` runs.
    ``candidates`` caps the models exported and timed; the search
    stops earlier once within ``tolerance`` (relative) of the target.
    ``exporter`` is tried first for the dense model and then used for every
    candidate: ``legacy`` exports in a fraction of the dynamo exporter's time,
    and dense and compact are always exported alike, so the ratio is fair.
    Files are written as the CLI writes its output (dynamic batch, the output
    contract's outputs).
    """

    runs: int | None = None
    rounds: int = 3
    warmup: int = 3
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

    def __init__(self, state: CompileState, folder: Path, search: LatencySearch, build: Build):
        from ..errors import ExportError
        from ..onnx_latency import open_session

        self.state, self.folder, self.search, self.build = state, folder, search, build
        self.exporter = search.exporter
        try:
            dense = self._export(state.graph, "dense")
        except ExportError:
            if self.exporter == "auto":
                raise
            self.exporter = "auto"
            dense = self._export(state.graph, "dense")
        self.dense = open_session(dense, threads=search.threads)

    def _export(self, model: nn.Module, name: str) -> Path:
        from ..onnx_export import export_onnx

        path = self.folder / f"{name}.onnx"
        # as the file the user gets is written (dynamic batch, the contract's outputs), so the time is its time
        contract = self.state.contract
        export_onnx(model, self.state.example_inputs, path, exporter=self.exporter,
                    outputs=contract.eval if contract is not None else None,
                    tolerance=max(self.state.config.tolerance, 1e-4))
        return path

    def __call__(self, class_kept: torch.Tensor, flops_fraction: float) -> _Timing:
        from ..onnx_latency import compare_latency, open_session

        path = self._export(self.build(class_kept), "compact")
        compact = open_session(path, threads=self.search.threads)
        s = self.search
        timed = compare_latency(self.dense, compact, self.state.example_inputs, warmup=s.warmup, runs=s.runs,
                                rounds=s.rounds)
        del compact
        path.unlink(missing_ok=True)
        return _Timing(class_kept, flops_fraction, timed.dense.median_ms, timed.compact.median_ms)


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


def _time_candidates(state: CompileState, flops: FlopsSearch, target: float, search: LatencySearch,
                     build: Build) -> tuple[list[_Timing], torch.Tensor, int | None]:
    """Timed candidates until one is within tolerance (or the search ends),
    the mask that prunes furthest, and the thread count the sessions used."""
    dense = flops.dense or 1
    floor_kept = flops.floor
    floor = flops.predict(floor_kept) / dense
    timings: list[_Timing] = []
    with tempfile.TemporaryDirectory(prefix="graphprune-latency-") as tmp:
        timer = _Timer(state, Path(tmp), search, build)
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
    return timings, floor_kept, threads


def fit_latency(state: CompileState, ranking: Ranking, finish: Finish, target: float, build: Build,
                search: LatencySearch | None = None) -> BudgetResult:
    """Kept classes whose compact model, on ONNX Runtime, takes ``target`` x
    the dense model's time: a search over FLOPs fractions (each one a
    :class:`FlopsSearch`), at most ``search.candidates`` models measured."""
    search = search or LatencySearch()
    flops = FlopsSearch(state, ranking, finish)
    trade = Trade.of(state, flops, target, search.threads) if state.config.trade_flops else None
    if trade is not None:
        flops = trade.search
    timings, floor_kept, threads = _time_candidates(state, flops, target, search, build)
    faster = [t for t in timings if t.fraction < 1]  # a model slower than dense is never the best
    best = min(faster, key=lambda t: abs(t.fraction - target)) if faster else min(timings, key=lambda t: t.fraction)
    rounds = "adaptive rounds (until both medians were stable)" if search.runs is None else \
        f"{search.rounds} rounds of {search.runs} runs"
    how = (f"medians of {rounds} interleaved with the dense model, "
           f"ONNX Runtime CPU, {threads or 'default'} threads; latency on a shared machine is noisy")
    result = BudgetResult(
        "latency", target, best.fraction, best.flops_fraction, flops.dense, flops.predict(best.class_kept),
        ranked_dropped(flops, best.class_kept), flops.n_max, best.class_kept,
        dense_ms=best.dense_ms, compact_ms=best.compact_ms, method=how,
        candidates=[{"flops_fraction": t.flops_fraction, "dense_ms": t.dense_ms, "compact_ms": t.compact_ms,
                     "latency_fraction": t.fraction} for t in timings],
    )
    trade_notes(state, trade, result, "latency")
    summary = (f"dense {best.dense_ms:.3f} ms -> compact {best.compact_ms:.3f} ms = {best.fraction:.3f} of dense "
               f"at {best.flops_fraction:.3f} of the dense FLOPs; best of {len(timings)} measured candidates, {how}")
    if not faster:
        result.notes.append(f"target_latency {target:g}: NO candidate was faster than the dense model; the fastest "
                            f"is returned ({summary}); round channel counts (round_to='auto') or prune further")
    elif abs(best.fraction - target) <= search.tolerance * target:
        result.notes.append(f"target_latency {target:g} met: {summary}")
    elif best.fraction > target and torch.equal(best.class_kept, floor_kept):
        result.notes.append(f"target_latency {target:g} cannot be reached: pruned as far as allowed "
                            f"({why_limited(state)}); {summary}")
    else:
        result.notes.append(f"target_latency {target:g} not met within {search.tolerance:.0%}: closest {summary}")
    return result
