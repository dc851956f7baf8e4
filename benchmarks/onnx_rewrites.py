#!/usr/bin/env python
"""What graphprune's ONNX rewrites (``graphprune/onnx_rewrites.py``) buy on ONNX Runtime.

Each model (built as ``benchmarks/default_latency.py`` builds it: random
weights, seed 0; yolov8n at ``--yolo-size``) is pruned with the CLI's options
for ``graphprune prune MODEL -o pruned.onnx`` (ratio 0.5 per_layer), and the
dense and the pruned model are each exported twice as the CLI exports them
(``graphprune.export_onnx`` with the CLI's ``deployed`` options: dynamic
batch, the output contract): as the exporter writes it (``rewrite=False``)
and rewritten (the default), both checked against PyTorch, then timed
against each other with ``graphprune.compare_latency`` (ONNX Runtime CPU,
``--threads`` threads, ``--rounds`` interleaved rounds of ``--runs`` runs,
medians). The last column is the pruned model's speed-up over the dense one,
both as exported and both rewritten.

    python benchmarks/onnx_rewrites.py
    python benchmarks/onnx_rewrites.py --models yolov8n resnet18 --yolo-size 320
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from default_latency import build  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["yolov8n"])
    parser.add_argument("--yolo-size", type=int, default=640)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    import torch

    import graphprune

    torch.set_num_threads(args.threads)
    from default_latency import cli_options

    from graphprune.cli.commands import deployed

    print(f"ONNX Runtime CPU, {args.threads} threads, {args.rounds} interleaved rounds x {args.runs} runs, medians\n")
    print("| model | file | rewrites | as exported ms | rewritten ms | speed-up | pruned vs dense (as exported / "
          "rewritten) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        model, inputs = build(name, args.yolo_size)
        result = graphprune.prune(model, inputs, **cli_options(name, []))
        options = deployed(result)
        with tempfile.TemporaryDirectory(prefix="graphprune-rewrites-") as tmp:
            files = {}
            for which, source in (("dense", result.state.graph), ("pruned", result.compact)):
                plain = graphprune.export_onnx(source, inputs, Path(tmp) / f"{which}_plain.onnx", rewrite=False,
                                               **options)
                rewritten = graphprune.export_onnx(source, inputs, Path(tmp) / f"{which}.onnx", **options)
                files[which] = (plain, rewritten)
            for which, (plain, rewritten) in files.items():
                timed = graphprune.compare_latency(plain.path, rewritten.path, inputs, threads=args.threads,
                                                   runs=args.runs, rounds=args.rounds)
                speedups = ""
                if which == "pruned":
                    both = [graphprune.compare_latency(files["dense"][i].path, files["pruned"][i].path, inputs,
                                                       threads=args.threads, runs=args.runs, rounds=args.rounds)
                            for i in (0, 1)]
                    speedups = " / ".join(f"{c.speedup:.2f}x" for c in both)
                print(f"| {name} | {which} | {'; '.join(rewritten.rewrites) or 'none'} | {timed.dense.median_ms:.2f} "
                      f"| {timed.compact.median_ms:.2f} | {timed.speedup:.2f}x | {speedups} |", flush=True)


if __name__ == "__main__":
    main()
