#!/usr/bin/env python
"""How graphprune's compile time grows with the size of the graph.

Three synthetic families, each at 25, 50, 100 and 200 blocks (32 channels,
1x3x32x32 input, so convolution arithmetic is small next to the analysis):

- ``chain``: conv-bn-relu blocks one after another;
- ``residual``: ResNet basic blocks (conv-bn-relu-conv-bn + identity, relu);
- ``concat``: each block concatenates its input with a conv-bn-relu of it
  and a 1x1 conv brings the channels back (a routing pattern like YOLO's).

Each size is compiled ``--repeat`` times in this process (ratio 0.5, L1,
group mode, verification on) and the fastest run's per-pass times are shown.
Time per graph node should stay flat as the blocks grow: a pass whose
ms/node climbs with size is super-linear.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --blocks 25 50 100 200 400 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn as nn

import graphprune

CHANNELS = 32


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(c, c), nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class Concat(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.branch = conv_bn_relu(c, c)
        self.merge = conv_bn_relu(2 * c, c, k=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([x, self.branch(x)], dim=1))


def build(family: str, blocks: int) -> nn.Module:
    torch.manual_seed(0)
    block = {"chain": lambda: conv_bn_relu(CHANNELS, CHANNELS), "residual": lambda: Residual(CHANNELS),
             "concat": lambda: Concat(CHANNELS)}[family]
    return nn.Sequential(
        conv_bn_relu(3, CHANNELS), *[block() for _ in range(blocks)],
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(CHANNELS, 10),
    ).eval()


def compile_once(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, float], float, int, bool]:
    start = time.perf_counter()
    result = graphprune.prune(model, x, ratio=0.5, criterion="l1", mode="group", ignore=[str(len(model) - 1)])
    wall = time.perf_counter() - start
    nodes = len(result.state.graph.graph.nodes)
    return dict(result.report.timings), wall, nodes, bool(result.report.exact)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", nargs="+", type=int, default=[25, 50, 100, 200])
    parser.add_argument("--families", nargs="+", default=["chain", "residual", "concat"])
    parser.add_argument("--repeat", type=int, default=2, help="compiles per size (the fastest is shown)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    print(f"machine: {os.cpu_count()} cores, {cpu}; torch {torch.__version__}, graphprune {graphprune.__version__}, "
          f"{args.threads} torch thread(s); 1x3x32x32, {CHANNELS} channels, ratio 0.5, L1, group mode")
    x = torch.randn(1, 3, 32, 32)
    compile_once(build("chain", 2), x)  # first-call costs (imports, dispatch tables) are not the graph's
    for family in args.families:
        rows = []
        for blocks in args.blocks:
            model = build(family, blocks)
            best = None
            for _ in range(args.repeat):
                timings, wall, nodes, exact = compile_once(model, x)
                if best is None or sum(timings.values()) < sum(best[0].values()):
                    best = (timings, wall, nodes, exact)
            rows.append((blocks, *best))
        passes = list(rows[0][1])
        head = ["blocks", "nodes", *passes, "total ms", "ms/node", "exact"]
        print(f"\n{family}")
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for blocks, timings, _wall, nodes, exact in rows:
            total = sum(timings.values()) * 1000
            cells = [str(blocks), str(nodes), *(f"{timings.get(p, 0) * 1000:.1f}" for p in passes),
                     f"{total:.0f}", f"{total / nodes:.3f}", "yes" if exact else "NO"]
            print("| " + " | ".join(cells) + " |")
        small, large = rows[0], rows[-1]
        growth = (sum(large[1].values()) / large[3]) / (sum(small[1].values()) / small[3])
        worst = max(passes, key=lambda p: (large[1].get(p, 0) / large[3]) / max(small[1].get(p, 0) / small[3], 1e-9)
                    if small[1].get(p, 0) > 1e-3 else 0)
        print(f"ms/node at {large[0]} blocks / at {small[0]} blocks: {growth:.2f} "
              f"(1.0 = linear; the pass growing most per node: {worst})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
