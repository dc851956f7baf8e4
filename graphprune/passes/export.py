"""Export pass: write the compact (and optionally the dense) graph to ONNX,
each checked on ONNX Runtime against PyTorch (see :func:`graphprune.onnx_export.export_onnx`).

Not in the default pipeline, since it needs paths::

    pipeline = Pipeline.default().insert_after("measure", ExportPass("small.onnx", dense_path="dense.onnx"))
    result = graphprune.prune(model, x, pipeline=pipeline)
    result.state.measurements["onnx"]["compact"]   # an OnnxExport

Results go to ``state.measurements["onnx"]``: ``{"compact": OnnxExport}``,
plus ``"dense"`` when ``dense_path`` is given.
"""

from __future__ import annotations

import os

from ..onnx_export import export_onnx
from ..pipeline import CompileState


class ExportPass:
    name = "export"
    provides = ("measurements",)

    def __init__(
        self,
        compact_path: str | os.PathLike,
        dense_path: str | os.PathLike | None = None,
        *,
        dynamic_batch: bool = True,
        opset: int | None = None,
        exporter: str = "auto",
        tolerance: float = 1e-4,
    ):
        self.compact_path = compact_path
        self.dense_path = dense_path
        self.options = dict(dynamic_batch=dynamic_batch, opset=opset, exporter=exporter, tolerance=tolerance)
        self.requires = ("compact",) if dense_path is None else ("compact", "graph")

    def __call__(self, state: CompileState) -> None:
        results = {
            "compact": export_onnx(state.compact, state.example_inputs, self.compact_path, **self.options)
        }
        if self.dense_path is not None:
            results["dense"] = export_onnx(state.graph, state.example_inputs, self.dense_path, **self.options)
        state.measurements["onnx"] = results
