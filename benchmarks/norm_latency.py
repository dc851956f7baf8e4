#!/usr/bin/env python
"""Transformers on ONNX Runtime: dense against compact, and what the compact norms cost.

For each model (torchvision, random weights, seed 0, 1x3x224x224; a classifier
that starts at zero, as ViT's does, gets small random weights) graphprune
prunes at ratio 0.5, L1, ``group`` mode, ``round_to="auto"`` (what an ONNX
output gets by default), verified. Three files are exported as the CLI exports
them (``graphprune.export_onnx``: dynamic batch, checked on ONNX Runtime):

- dense: the original model;
- compact: ``result.compact``, whose pruned LayerNorms are
  :class:`~graphprune.norms.CompactLayerNorm` (statistics over the original
  count: plain ops in ONNX, no fused ``LayerNormalization``);
- plain-op norms: the compact model with each ``CompactLayerNorm`` computing
  the same statistics in elementwise ops (sum / N, the two-pass variance plus
  (N - n) * mean^2; what graphprune exported before it padded the kept
  channels back into the runtime's fused norm);
- standard norms: the compact model with every ``CompactLayerNorm`` swapped
  for an ``nn.LayerNorm`` of the same width and parameters. It computes
  something else (its statistics count only the kept channels), but it has
  the same shapes everywhere and exports to ONNX's fused ``LayerNormalization``,
  so it is what the compact model would cost if its norms were free.

The three are timed interleaved (ONNX Runtime CPU sessions from
``graphprune.onnx_latency.open_session``, ``--threads`` intra-op threads,
``--rounds`` rounds of ``--runs`` runs of each file in turn; the median of the
rounds' medians): dense against compact (speed-up, and the fraction of the ideal:
speed-up x FLOPs ratio), and standard norms against compact (the compact
norms' cost: compact ms / standard-norms ms - 1, and the same for the
plain-op form).

A second table times one norm alone (the shapes of these models' pruned
LayerNorms, ratio 0.5: tokens x kept channels, statistics over twice as
many), exported alone and timed the same way: the compact norm, its plain-op
form and a standard LayerNorm over the kept channels. Whole models on a shared
2-core machine vary by about 10 % from run to run, which is the size of the
differences in the first table; the second one is the stable measure.

    python benchmarks/norm_latency.py [--models convnext_tiny swin_t vit_b_16] [--json out.json]
    python benchmarks/norm_latency.py --models   # the per-norm table only
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torchvision

import graphprune
from graphprune.norms import CompactLayerNorm
from graphprune.onnx_export import export_onnx
from graphprune.onnx_latency import measure_latency, open_session

MODELS = ["convnext_tiny", "swin_t", "vit_b_16", "maxvit_t"]
#: (input shape, channels the statistics count) of pruned LayerNorms in the models above
NORM_SHAPES = [((1, 56, 56, 48), 96), ((1, 14, 14, 192), 384), ((1, 64, 49, 32), 64), ((1, 4, 49, 128), 256),
               ((1, 197, 384), 768)]


class PlainOpLayerNorm(nn.Module):
    """A CompactLayerNorm's arithmetic in elementwise ops (exact too; not fused by any runtime)."""

    def __init__(self, norm: CompactLayerNorm):
        super().__init__()
        self.total, self.eps, self.weight, self.bias = norm.total, norm.eps, norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.sum(-1, keepdim=True) / self.total
        centered = x - mean
        var = (centered.pow(2).sum(-1, keepdim=True) + (self.total - x.shape[-1]) * mean.pow(2)) / self.total
        y = centered * torch.rsqrt(var + self.eps)
        y = y if self.weight is None else y * self.weight
        return y if self.bias is None else y + self.bias


def standard_norm(m: CompactLayerNorm) -> nn.Module:
    norm = nn.LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine,
                        bias=m.bias is not None)
    if m.elementwise_affine:
        norm.weight = m.weight
        if m.bias is not None:
            norm.bias = m.bias
    return norm


def with_norms(model: nn.Module, make) -> tuple[nn.Module, int]:
    """A copy of ``model`` with every CompactLayerNorm replaced by ``make(it)``; and how many were replaced."""
    out = copy.deepcopy(model)
    swaps = [(name, m) for name, m in out.named_modules() if isinstance(m, CompactLayerNorm)]
    for name, m in swaps:
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent), attr, make(m))
    return out.eval(), len(swaps)


def run(name: str, args: argparse.Namespace, work: Path) -> dict:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    for layer in model.modules():  # ViT starts its head at zero: every output 0 would make "exact" vacuous
        if isinstance(layer, nn.Linear) and not layer.weight.any():
            nn.init.normal_(layer.weight, 0.0, 0.02)
    x = torch.randn(1, 3, 224, 224)
    start = time.perf_counter()
    result = graphprune.prune(model, x, ratio=0.5, criterion="l1", mode="group", round_to="auto",
                              heads=args.heads)
    prune_s = time.perf_counter() - start
    standard, swapped = with_norms(result.compact, standard_norm)
    plain, _ = with_norms(result.compact, PlainOpLayerNorm)
    files = {}
    for tag, m in (("dense", model), ("compact", result.compact), ("plain", plain), ("standard", standard)):
        files[tag] = work / f"{name}_{tag}.onnx"
        export_onnx(m, x, files[tag])
    ms = interleaved({tag: open_session(path, threads=args.threads) for tag, path in files.items()}, x,
                     args.rounds, args.runs)
    r = result.report
    row = {
        "model": name, "exact": bool(r.exact), "max_rel_error": r.max_rel_error, "prune_s": prune_s,
        "compact_norms": swapped, "flops_ratio": r.flops_after / r.flops_before,
        "dense_ms": ms["dense"], "compact_ms": ms["compact"], "standard_ms": ms["standard"],
        "plain_ms": ms["plain"],
    }
    row["speedup"] = row["dense_ms"] / row["compact_ms"]
    row["ideal_fraction"] = row["speedup"] * row["flops_ratio"]
    row["norm_cost"] = row["compact_ms"] / row["standard_ms"] - 1
    row["plain_cost"] = row["plain_ms"] / row["standard_ms"] - 1
    return row


def norm_alone(shape: tuple[int, ...], total: int, args: argparse.Namespace, work: Path) -> dict:
    """One pruned LayerNorm alone: compact, plain-op and standard, ms each."""
    kept = shape[-1]
    g = torch.Generator().manual_seed(0)
    layer = nn.LayerNorm(total)
    with torch.no_grad():
        layer.weight.normal_(generator=g)
        layer.bias.normal_(generator=g)
        layer.weight[kept:] = 0
        layer.bias[kept:] = 0
    compact = CompactLayerNorm(layer, total, kept)
    compact.weight, compact.bias = nn.Parameter(layer.weight[:kept].clone()), nn.Parameter(layer.bias[:kept].clone())
    x = torch.randn(shape, generator=g)
    files = {}
    for tag, m in (("compact", compact), ("plain", PlainOpLayerNorm(compact)), ("standard", standard_norm(compact))):
        files[tag] = work / f"norm_{total}_{'x'.join(map(str, shape))}_{tag}.onnx"
        export_onnx(m.eval(), x, files[tag])
    ms = interleaved({tag: open_session(path, threads=args.threads) for tag, path in files.items()}, x,
                     args.rounds, args.runs * 5)
    return {"shape": list(shape), "total": total, **{f"{tag}_ms": v for tag, v in ms.items()}}


def interleaved(sessions: dict, x: torch.Tensor, rounds: int, runs: int) -> dict[str, float]:
    """Median ms of each session over ``rounds`` rounds of ``runs`` runs, the sessions in turn."""
    times: dict[str, list[float]] = {tag: [] for tag in sessions}
    for session in sessions.values():
        measure_latency(session, x, warmup=3, runs=1)
    for _ in range(rounds):
        for tag, session in sessions.items():
            lat = measure_latency(session, x, warmup=1, runs=runs)
            times[tag].append(lat.median_ms)
    return {tag: statistics.median(v) for tag, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--heads", default="dims", choices=["dims", "whole"],
                        help="attention: prune head dims (default) or drop whole heads")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="graphprune-norm-latency-"))
    rows = []
    for name in args.models:
        try:
            rows.append(run(name, args, work))
        except Exception as exc:  # a row, not a crash
            rows.append({"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"})
        print(f"  {name}: done", file=sys.stderr, flush=True)
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{os.cpu_count()} cores, ONNX Runtime {args.threads} threads, {args.rounds} rounds x {args.runs} runs, "
          f"load average {load}\n")
    if rows:
        print("| model | exact (rel err) | compact norms | FLOPs ratio | dense ms | compact ms | speed-up "
              "| fraction of ideal | standard norms ms | compact norms' cost | plain-op norms ms | plain-op cost |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for row in rows:
            if "error" in row:
                print(f"| {row['model']} | {row['error']} |" + " |" * 10)
                continue
            print(f"| {row['model']} | {'yes' if row['exact'] else 'NO'} ({row['max_rel_error']:.1e}) | "
                  f"{row['compact_norms']} | {row['flops_ratio']:.2f} | {row['dense_ms']:.1f} | {row['compact_ms']:.1f} | "
                  f"{row['speedup']:.2f}x | {row['ideal_fraction']:.2f} | {row['standard_ms']:.1f} | "
                  f"{100 * row['norm_cost']:+.1f} % | {row['plain_ms']:.1f} | {100 * row['plain_cost']:+.1f} % |")
    norms = [norm_alone(shape, total, args, work) for shape, total in NORM_SHAPES]
    print("\none pruned LayerNorm alone (input shape, statistics over N channels): ms, and vs standard\n")
    print("| input | N | compact ms | plain-op ms | standard ms | compact / standard | plain-op / standard |")
    print("|---|---|---|---|---|---|---|")
    for n in norms:
        print(f"| {tuple(n['shape'])} | {n['total']} | {n['compact_ms']:.3f} | {n['plain_ms']:.3f} | "
              f"{n['standard_ms']:.3f} | {n['compact_ms'] / n['standard_ms']:.2f} | "
              f"{n['plain_ms'] / n['standard_ms']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"models": rows, "norms": norms}, indent=2))


if __name__ == "__main__":
    main()
