#!/usr/bin/env python
"""What graphprune's ONNX rewrites (``graphprune/onnx_rewrites.py``) buy on ONNX Runtime.

Each model (built as ``benchmarks/default_latency.py`` builds it: random
weights, seed 0; yolov8n at ``--yolo-size``) is exported dense twice with
``graphprune.export_onnx``: as the exporter writes it (``rewrite=False``) and
rewritten (the default), both checked against PyTorch, then timed against
each other with ``graphprune.compare_latency`` (ONNX Runtime CPU,
``--threads`` threads, ``--rounds`` interleaved rounds of ``--runs`` runs,
medians). The pruned models the CLI writes get the same rewrites, so the
time saved is a fixed cost taken off both.

    python benchmarks/onnx_rewrites.py
    python benchmarks/onnx_rewrites.py --models yolov8n --yolo-size 320
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
    print(f"ONNX Runtime CPU, {args.threads} threads, {args.rounds} interleaved rounds x {args.runs} runs, medians\n")
    print("| model | rewrites | as exported ms | rewritten ms | speed-up | max abs error vs PyTorch (rewritten) |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        model, inputs = build(name, args.yolo_size)
        with tempfile.TemporaryDirectory(prefix="graphprune-rewrites-") as tmp:
            plain = graphprune.export_onnx(model, inputs, Path(tmp) / "plain.onnx", dynamic_batch=False,
                                           rewrite=False)
            rewritten = graphprune.export_onnx(model, inputs, Path(tmp) / "rewritten.onnx", dynamic_batch=False)
            timed = graphprune.compare_latency(plain.path, rewritten.path, inputs, threads=args.threads,
                                               runs=args.runs, rounds=args.rounds)
        print(f"| {name} | {'; '.join(rewritten.rewrites) or 'none'} | {timed.dense.median_ms:.2f} | "
              f"{timed.compact.median_ms:.2f} | {timed.speedup:.2f}x | {rewritten.max_abs_error:.2g} |", flush=True)


if __name__ == "__main__":
    main()
