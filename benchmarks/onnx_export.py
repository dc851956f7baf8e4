"""ONNX export time (dynamo vs legacy exporter) and ONNX Runtime latency, dense vs compact.

For each model (torchvision, random weights, num_classes=10): prune at the
given ratio, then export the dense and the compact graph with each exporter
``--repeats`` times (alternating, so machine load hits both alike) through
:func:`graphprune.onnx_export.export_onnx` (export + onnx.checker + ONNX Runtime
check), and time both files on ONNX Runtime (CPU). Prints a markdown table.

    python benchmarks/onnx_export.py                                  # resnet18, convnext_tiny at 64x64
    python benchmarks/onnx_export.py --models resnet50 --size 224 --threads 1

The first export in a process also pays one-time imports and warm-up; it is
reported apart from the median of the rest.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
import torchvision

import graphprune
from graphprune.onnx_export import export_onnx
from graphprune.onnx_latency import compare_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,convnext_tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    print(
        "| model | graph | exporter | first export s | median of rest s | file MB | max abs err |\n"
        "|---|---|---|---|---|---|---|"
    )
    latency_rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            torch.manual_seed(0)
            model = getattr(torchvision.models, name)(num_classes=10).eval()
            x = torch.randn(1, 3, args.size, args.size)
            result = graphprune.prune(model, x, ratio=args.ratio)
            for graph_name, graph in (("dense", result.state.graph), ("compact", result.compact)):
                seconds: dict[str, list[float]] = {"dynamo": [], "legacy": []}
                last = {}
                for _ in range(args.repeats):
                    for exporter in seconds:
                        info = export_onnx(
                            graph, x, folder / f"{name}_{graph_name}_{exporter}.onnx", exporter=exporter
                        )
                        seconds[exporter].append(info.seconds)
                        last[exporter] = info
                for exporter, times in seconds.items():
                    rest = f"{statistics.median(times[1:]):.2f}" if len(times) > 1 else "n/a"
                    info = last[exporter]
                    print(
                        f"| {name} | {graph_name} | {exporter} | {times[0]:.2f} | {rest} | "
                        f"{info.size_bytes / 1e6:.2f} | {info.max_abs_error:.2g} |",
                        flush=True,
                    )
            report = result.report
            cmp = compare_latency(
                folder / f"{name}_dense_dynamo.onnx",
                folder / f"{name}_compact_dynamo.onnx",
                x,
                flops=(report.flops_before, report.flops_after),
                runs=args.runs,
                threads=args.threads,
            )
            latency_rows.append((name, cmp))

    print("\n| model | dense ms | compact ms | speed-up | FLOPs ratio | threads |\n|---|---|---|---|---|---|")
    for name, cmp in latency_rows:
        print(
            f"| {name} | {cmp.dense.median_ms:.3f} | {cmp.compact.median_ms:.3f} | {cmp.speedup:.2f}x | "
            f"{cmp.flops_ratio:.2f}x | {cmp.compact.threads} |"
        )


if __name__ == "__main__":
    main()
