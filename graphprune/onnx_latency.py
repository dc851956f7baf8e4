"""Latency of an ONNX model on ONNX Runtime, and dense vs compact speed-up.

:func:`measure_latency` times ``session.run`` on fixed inputs after a few
warm-up runs and reports the median and the spread. :func:`compare_latency`
times a dense and a compact file on the same inputs, in interleaved rounds,
and puts the measured speed-up next to the FLOPs ratio, the number pruning
promises. It is the one timer: the CLI, the latency pass and the latency
budget search all time through it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import torch

from .errors import ConfigError

Inputs = (
    torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray] | Mapping[str, torch.Tensor | np.ndarray]
)


@dataclass(frozen=True)
class Latency:
    """Wall-clock time of one ``session.run``, over ``runs`` timed runs.

    ``threads`` is the intra-op thread count the session was built with
    (``None`` only for a caller's session left at ONNX Runtime's default).
    """

    median_ms: float
    p10_ms: float
    p90_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup: int
    threads: int | None
    provider: str

    def __str__(self) -> str:
        threads = "default" if self.threads is None else self.threads
        return (
            f"{self.median_ms:.3f} ms median (p10 {self.p10_ms:.3f}, p90 {self.p90_ms:.3f}; "
            f"{self.runs} runs, threads={threads}, {self.provider})"
        )


@dataclass(frozen=True)
class LatencyComparison:
    """Dense vs compact on ONNX Runtime: measured speed-up (ratio of medians)
    next to the FLOPs ratio (dense FLOPs / compact FLOPs, if ``flops`` is known)."""

    dense: Latency
    compact: Latency
    flops: tuple[int, int] | None = None

    @property
    def speedup(self) -> float:
        return self.dense.median_ms / self.compact.median_ms

    @property
    def flops_ratio(self) -> float | None:
        if self.flops is None or not self.flops[0] or not self.flops[1]:
            return None
        return self.flops[0] / self.flops[1]

    def __str__(self) -> str:
        flops = f", FLOPs ratio {self.flops_ratio:.2f}x" if self.flops_ratio is not None else ""
        return (
            f"ONNX Runtime: dense {self.dense.median_ms:.3f} ms -> compact {self.compact.median_ms:.3f} ms "
            f"(speed-up {self.speedup:.2f}x{flops}; median of {self.compact.runs} runs, "
            f"threads={self.compact.threads if self.compact.threads is not None else 'default'})"
        )


def default_threads() -> int:
    """The cores this process may run on (what the intra-op pool is sized to by default)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def open_session(
    path: str | os.PathLike, *, threads: int | None = None, provider: str = "CPUExecutionProvider"
) -> ort.InferenceSession:
    """An ONNX Runtime session for timing: ``threads`` intra-op threads
    (default: :func:`default_threads`), one inter-op thread, sequential execution.

    Example::

        session = open_session("model.onnx", threads=1)
    """
    threads = default_threads() if threads is None else threads
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1; got {threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=[provider])


def measure_latency(
    onnx_path_or_session: str | os.PathLike | ort.InferenceSession,
    inputs: Inputs,
    *,
    warmup: int = 3,
    runs: int = 20,
    threads: int | None = None,
    provider: str = "CPUExecutionProvider",
) -> Latency:
    """Time ``runs`` runs of an ONNX model on ONNX Runtime, after ``warmup`` untimed ones.

    Example::

        from graphprune.onnx_latency import measure_latency
        lat = measure_latency("resnet18_pruned.onnx", torch.randn(1, 3, 224, 224), threads=1)
        print(lat.median_ms, lat.p10_ms, lat.p90_ms)

    ``inputs``: a tensor or array, a sequence of them in the model's input
    order, or a mapping from input name. ``threads`` sets the intra-op thread
    count of a session built from a path (default: the cores this process may
    use); a ready session is timed as it was built, so ``threads`` and
    ``provider`` must be left at their defaults then.
    """
    _check_counts(runs, warmup, 1)
    session = _session(onnx_path_or_session, threads, provider)
    feed = onnx_feed(session, inputs)
    _run(session, feed, warmup)
    return _summary(session, _run(session, feed, runs), warmup)


def compare_latency(
    dense: str | os.PathLike | ort.InferenceSession,
    compact: str | os.PathLike | ort.InferenceSession,
    inputs: Inputs,
    *,
    flops: tuple[int, int] | None = None,
    warmup: int = 3,
    runs: int | None = 20,
    rounds: int = 1,
    threads: int | None = None,
) -> LatencyComparison:
    """Time a dense and a compact ONNX model on the same inputs, in
    ``rounds`` interleaved rounds of ``runs`` runs each (a load change on the
    machine then hits both); each latency is over all its timed runs. Each
    model first runs ``warmup`` times (once at least: that run's time sets how
    many runs settle and fill a round), and every round starts with untimed
    runs of its model (:data:`SETTLE_MS` of them, one at least): the session
    run before it leaves its threads spinning for a while (ONNX Runtime's
    default), and on a small machine they slow the first runs of the next
    session (``benchmarks/latency_settle.py`` measures what that did).
    ``runs=None`` times adaptively: rounds of at least :data:`ROUND_MS` of runs
    (5 at least), until both medians move less than 2 % in a round (at least
    3 rounds, at most 20).

    Example::

        from graphprune.onnx_latency import compare_latency
        r = result.report
        cmp = compare_latency("dense.onnx", "compact.onnx", x, flops=(r.flops_before, r.flops_after), rounds=3)
        print(cmp.speedup, cmp.flops_ratio)

    ``flops``: (dense FLOPs, compact FLOPs), e.g. from
    :class:`~graphprune.api.Report`; gives ``flops_ratio``.
    """
    _check_counts(5 if runs is None else runs, warmup, rounds)
    sessions = [_session(s, threads, "CPUExecutionProvider") for s in (dense, compact)]
    feeds = [onnx_feed(s, inputs) for s in sessions]
    typical = [float(np.min(_run(session, feed, max(warmup, 1)))) for session, feed in zip(sessions, feeds)]
    settle = [math.ceil(SETTLE_MS / max(ms, 1e-3)) for ms in typical]
    per_round = [runs or min(100, max(5, math.ceil(ROUND_MS / max(ms, 1e-3)))) for ms in typical]
    samples: list[list[np.ndarray]] = [[], []]
    medians: list[tuple[float, float]] = []
    for done in range(1, (20 if runs is None else rounds) + 1):
        for which, (session, feed) in enumerate(zip(sessions, feeds)):
            _run(session, feed, settle[which])
            samples[which].append(_run(session, feed, per_round[which]))
        if runs is None:
            medians.append(tuple(float(np.median(np.concatenate(s))) for s in samples))
            if done >= 3 and all(abs(a - b) <= 0.02 * b for a, b in zip(medians[-1], medians[-2])):
                break
    dense_latency, compact_latency = (
        _summary(session, np.concatenate(times), warmup) for session, times in zip(sessions, samples)
    )
    return LatencyComparison(dense_latency, compact_latency, flops)


#: untimed milliseconds of runs that start every round of compare_latency (one run at least)
SETTLE_MS = 10.0
#: timed milliseconds of runs per round of compare_latency's adaptive mode
ROUND_MS = 50.0


def _check_counts(runs: int, warmup: int, rounds: int) -> None:
    for name, count, least in (("runs", runs, 1), ("warmup", warmup, 0), ("rounds", rounds, 1)):
        if not isinstance(count, int) or count < least:
            raise ConfigError(f"{name} must be an integer >= {least}; got {count!r}")


def _session(source: str | os.PathLike | ort.InferenceSession, threads: int | None,
             provider: str) -> ort.InferenceSession:
    if isinstance(source, ort.InferenceSession):
        if threads is not None or provider != "CPUExecutionProvider":
            raise ConfigError(
                "threads and provider are fixed when a session is built; pass a path, or build the session with them"
            )
        return source
    return open_session(source, threads=threads, provider=provider)


def _run(session: ort.InferenceSession, feed: dict[str, np.ndarray], runs: int) -> np.ndarray:
    """Milliseconds of each of ``runs`` runs."""
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times[i] = time.perf_counter() - start
    return times * 1000.0


def _summary(session: ort.InferenceSession, times: np.ndarray, warmup: int) -> Latency:
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return Latency(
        median_ms=float(median),
        p10_ms=float(p10),
        p90_ms=float(p90),
        min_ms=float(times.min()),
        max_ms=float(times.max()),
        runs=int(times.size),
        warmup=warmup,
        threads=session.get_session_options().intra_op_num_threads or None,
        provider=session.get_providers()[0],
    )


def onnx_feed(session: ort.InferenceSession, inputs: Inputs) -> dict[str, np.ndarray]:
    """The ``{input name: array}`` dict ``session.run`` takes, from tensors or arrays
    (one, a sequence in the session's input order, or a mapping by name)."""
    names = [i.name for i in session.get_inputs()]
    if isinstance(inputs, Mapping):
        values = dict(inputs)
        missing = [n for n in names if n not in values]
        if missing:
            raise ConfigError(f"inputs lack {', '.join(missing)}; the model's inputs are {', '.join(names)}")
    else:
        seq = [inputs] if isinstance(inputs, (torch.Tensor, np.ndarray)) else list(inputs)
        if len(seq) != len(names):
            raise ConfigError(f"the model takes {len(names)} inputs ({', '.join(names)}); got {len(seq)}")
        values = dict(zip(names, seq))
    return {n: _array(values[n]) for n in names}


def _array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
