#!/usr/bin/env python
"""Why every round of ``compare_latency`` starts with untimed runs.

Two ONNX Runtime sessions timed in alternation on a small machine: the
session timed before leaves its threads spinning for a while (ONNX
Runtime's default), which slows the first runs of the next one. This script
exports a dense and a pruned model (``--model``, target_flops ``--flops``,
round_to auto; random weights, 1x3x224x224, legacy exporter, static batch)
and times the pair ``--repeat`` times in each of these ways, printing the
dense and compact medians and their fraction each time:

- ``10 x 3``: rounds of 10 runs, 3 rounds; ``adaptive``: ``runs=None``
  (the CLI's default); ``40 x 3``: long rounds, the reference;
- each with the settling runs (``SETTLE_MS`` of untimed runs starting every
  round, ``ROUND_MS`` adaptive rounds: as graphprune times now) and without
  (``SETTLE_MS = 0``, adaptive rounds of 5 runs: as it timed before).

    python benchmarks/latency_settle.py
    python benchmarks/latency_settle.py --model mobilenet_v3_large --repeat 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import warnings
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_b0")
    parser.add_argument("--flops", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    import torch
    import torchvision

    import graphprune
    from graphprune import onnx_latency

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)().eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    result = graphprune.prune(model, x, mode="global", target_flops=args.flops, round_to="auto", verify=False)
    folder = Path(tempfile.mkdtemp(prefix="graphprune-settle-"))
    dense = graphprune.export_onnx(result.state.graph, x, folder / "dense.onnx", exporter="legacy",
                                   dynamic_batch=False).path
    compact = graphprune.export_onnx(result.compact, x, folder / "compact.onnx", exporter="legacy",
                                     dynamic_batch=False).path
    saved = onnx_latency.SETTLE_MS, onnx_latency.ROUND_MS
    print(f"{args.model} at target_flops {args.flops}, ONNX Runtime CPU, {args.threads} threads")
    print("| rounds | settling runs | dense ms | compact ms | fraction |")
    print("|---|---|---|---|---|")
    for settle in (False, True):
        onnx_latency.SETTLE_MS, onnx_latency.ROUND_MS = saved if settle else (0.0, 0.0)
        for name, runs, rounds in (("10 x 3", 10, 3), ("adaptive", None, 3), ("40 x 3", 40, 3)):
            fractions = []
            for _ in range(args.repeat):
                c = graphprune.compare_latency(dense, compact, x, threads=args.threads, runs=runs, rounds=rounds)
                fractions.append(c.compact.median_ms / c.dense.median_ms)
                print(f"| {name} | {'yes' if settle else 'no'} | {c.dense.median_ms:.2f} | {c.compact.median_ms:.2f} "
                      f"| {fractions[-1]:.3f} |")
            print(f"| {name} | {'yes' if settle else 'no'} | | | spread {min(fractions):.3f}-{max(fractions):.3f}, "
                  f"median {statistics.median(fractions):.3f} |")
    onnx_latency.SETTLE_MS, onnx_latency.ROUND_MS = saved


if __name__ == "__main__":
    main()
