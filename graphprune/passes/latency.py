"""Latency pass: time the ONNX files the export pass wrote on ONNX Runtime.

Runs after :class:`~graphprune.passes.export.ExportPass`::

    pipeline = (Pipeline.default()
                .insert_after("measure", ExportPass("small.onnx", dense_path="dense.onnx"))
                .insert_after("export", LatencyPass(runs=50, threads=1)))

Results go to ``state.measurements["latency"]``: ``{"compact": Latency}``,
plus ``"dense"`` and ``"comparison"`` (a :class:`~graphprune.onnx_latency.LatencyComparison`
with the speed-up and the FLOPs ratio) when the dense model was exported too.
The comparison is also added to the report's notes.
"""

from __future__ import annotations

from ..errors import PipelineError
from ..onnx_latency import compare_latency, measure_latency
from ..pipeline import CompileState


class LatencyPass:
    name = "latency"
    requires: tuple[str, ...] = ()  # it needs measurements["onnx"], which it checks itself
    provides = ("measurements",)

    def __init__(self, *, warmup: int = 3, runs: int = 20, threads: int | None = None):
        self.options = dict(warmup=warmup, runs=runs, threads=threads)

    def __call__(self, state: CompileState) -> None:
        exported = state.measurements.get("onnx")
        if not exported:
            raise PipelineError(
                "pass 'latency' times the ONNX files the 'export' pass writes; add an ExportPass before it"
            )
        x = state.example_inputs
        if "dense" not in exported:
            state.measurements["latency"] = {"compact": measure_latency(exported["compact"].path, x, **self.options)}
            return
        m = state.measurements
        flops = (m["flops_before"], m["flops_after"]) if "flops_after" in m else None
        comparison = compare_latency(exported["dense"].path, exported["compact"].path, x, flops=flops, **self.options)
        state.measurements["latency"] = {"dense": comparison.dense, "compact": comparison.compact,
                                         "comparison": comparison}
        state.notes.append(str(comparison))
