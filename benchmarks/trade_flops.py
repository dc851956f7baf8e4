#!/usr/bin/env python
"""What ``trade_flops`` does to a budget: speed at the same FLOPs, FLOPs at the same latency.

For each model (random weights, seed 0, 1x3x224x224) this prunes as
``graphprune prune MODEL --target-latency T -o pruned.onnx`` (or
``--target-flops F`` with ``--flops F``) does (the CLI's
own options: global mode, round_to auto, verified), once ranking channels by
score alone (the default) and once with ``--trade-flops`` (score over the
time a FLOP of the channel costs, from a roofline of ONNX Runtime measured
on this machine). Both compact models and the dense one are exported as the
CLI exports them and timed against the dense file in one interleaved
comparison each (``graphprune.compare_latency``, ``--rounds`` rounds of
``--runs`` runs, medians, ``--threads`` threads), after the search, so the
latency column is an independent measurement, not the search's own.

Columns: the latency fraction measured here, the FLOPs fraction
(``torch.utils.flop_counter``), the share of the ranked channels' summed
score kept (the per-group normalised scores of the global ranking: what
the ranking by score maximises), and the whole ``prune()`` call's time.
With random weights a group's scores are nearly equal, so the trade's
factor decides more of the order than it would with trained weights:
the score column is the price, the FLOPs column what is bought.

    python benchmarks/trade_flops.py
    python benchmarks/trade_flops.py --flops 0.5
    python benchmarks/trade_flops.py --models mobilenet_v3_large resnet50 --target 0.5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

MODELS = ["mobilenet_v3_large", "efficientnet_b0", "mobilenet_v2", "regnet_y_400mf", "resnet50"]


def score_kept(result) -> float:
    """Of the global ranking's summed score (its normalised scores), the share the compact model keeps."""
    from graphprune.budget.latency_model import importance_kept
    from graphprune.passes.select import GlobalRanking, class_scores

    state = result.state
    ranking = GlobalRanking.of(state, class_scores(state))
    return importance_kept(ranking.scores, ranking.order, state.plan.class_kept)


def row(name: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    import torch

    import graphprune
    from graphprune.cli.arguments import build_parser, prune_options
    from graphprune.cli.commands import deployed
    from graphprune.cli.models import build_model
    from graphprune.flops import count_flops

    torch.manual_seed(0)
    model = build_model(name)
    inputs = (torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)),)
    dense_flops = count_flops(model, inputs)
    out, dense_path = [], None
    for trade in (False, True):
        budget = ["--target-flops", str(args.flops)] if args.flops else ["--target-latency", str(args.target)]
        cli = ["prune", name, *budget, "-o", "pruned.onnx"]
        options = prune_options(build_parser().parse_args(cli + (["--trade-flops"] if trade else [])))
        start = time.perf_counter()
        result = graphprune.prune(model, inputs, **options)
        seconds = time.perf_counter() - start
        export = deployed(result)
        if dense_path is None:
            dense_path = graphprune.export_onnx(result.state.graph, inputs, folder / "dense.onnx", **export).path
        path = graphprune.export_onnx(result.compact, inputs, folder / f"trade{int(trade)}.onnx", **export).path
        timed = graphprune.compare_latency(dense_path, path, inputs, threads=args.threads, runs=args.runs,
                                           rounds=args.rounds)
        out.append({"model": name, "trade": trade, "latency": timed.compact.median_ms / timed.dense.median_ms,
                    "search_latency": result.state.budget.compact_ms / result.state.budget.dense_ms
                    if result.state.budget.dense_ms else None, "dense_ms": timed.dense.median_ms,
                    "flops": count_flops(result.compact, inputs) / dense_flops, "score": score_kept(result),
                    "seconds": seconds, "exact": result.report.exact,
                    "candidates": len(result.state.budget.candidates),
                    "roofline": (result.state.budget.trade or {}).get("roofline_gflops"),
                    "roofline_gb": (result.state.budget.trade or {}).get("roofline_gbytes")})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--target", type=float, default=0.6, help="target_latency (default 0.6)")
    parser.add_argument("--flops", type=float, default=None, help="a target_flops instead of the latency target")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="graphprune-trade-") as tmp:
        for name in args.models:
            rows += row(name, args, Path(tmp))
    what = f"target_flops {args.flops}" if args.flops else f"target_latency {args.target}"
    print(f"{what}, ONNX Runtime CPU, {args.threads} threads, medians of {args.rounds} "
          f"interleaved rounds of {args.runs} runs")
    print("| model | ranking | latency measured (search's) | FLOPs | score kept | prune() s | exact |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        search = f" ({r['search_latency']:.3f})" if r["search_latency"] is not None else ""
        print(f"| {r['model']} | {'--trade-flops' if r['trade'] else 'score (default)'} | {r['latency']:.3f}{search} "
              f"| {r['flops']:.3f} | {r['score']:.3f} | {r['seconds']:.1f} "
              f"| {'yes' if r['exact'] else 'NO'} |")
    gain = [t["flops"] / p["flops"] for p, t in zip(rows[::2], rows[1::2])]
    lat = [t["latency"] / p["latency"] for p, t in zip(rows[::2], rows[1::2])]
    roof = next((r for r in rows if r["roofline"]), None)
    if roof is not None:
        print(f"roofline measured by trade_flops: {roof['roofline']:.0f} GFLOP/s, {roof['roofline_gb']:.0f} GB/s")
    score = [t["score"] / p["score"] for p, t in zip(rows[::2], rows[1::2])]
    print(f"median FLOPs kept, trade / score: {statistics.median(gain):.2f}x; median measured latency, "
          f"trade / score: {statistics.median(lat):.2f}x; median score kept, trade / score: "
          f"{statistics.median(score):.2f}x")


if __name__ == "__main__":
    main()
