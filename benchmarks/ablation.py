#!/usr/bin/env python
"""The paper's ablations (Lee, Lee & Hwang, Sensors 2023, Tables 7 and 8 and
section 4.5.3) on real data, with graphprune, on a few CPU cores.

Data: scikit-learn's handwritten digits (``sklearn.datasets.load_digits``,
1797 8x8 grey images, 10 classes; it ships inside the package, no download),
scaled to [0, 1], bilinearly upsampled to 16x16 and standardised, split once
into a stratified 70 % / 30 % train/test split (``random_state=0``, the same
for every seed). Training uses a random +-1 pixel shift.

Model: a small bottleneck ResNet: a 3x3 stem conv + BN + ReLU, three stages of
two bottleneck blocks (1x1 -> 3x3 -> 1x1, each with BN; the first block of a
stage has a 1x1 conv + BN projection shortcut), global average pooling and a
linear classifier ``fc``. Every block's last conv, its stage's projection (and,
in stage 1, nothing else: the stem feeds a projection) write one residual
stream, so how per-layer choices are combined (``coupling``) matters.

Per seed: the dense model is trained (SGD, momentum 0.9, nesterov off, cosine
learning rate from 0.1, weight decay 5e-4, batch 64), then for each criterion
(l1, l2, fpgm) pruned at CR 0.5 in the paper's per-layer mode (every conv drops
half its filters by its own ranking; ``fc`` is left alone) and fine-tuned
(SGD, momentum 0.9, weight decay 1e-4, cosine from 0.01, batch 64):

- Table 7: union vs intersection coupling (prune -> fine-tune the masked model
  -> ``graphprune.reconstruct``).
- Table 8: with BN masking, without (``mask_bn=False``, reconstructed with
  ``fold_constants=False``: the dropped channels' constants are lost, as in
  the paper), and without BN masking but with graphprune's constant folding
  (the same fine-tuned masked model, reconstructed with ``fold_constants=True``).
- Section 4.5.3 (l1): prune -> fine-tune masked -> reconstruct vs prune ->
  reconstruct -> fine-tune compact, same epochs and optimizer.
- The pruned wide model against a dense narrow one of about the same FLOPs,
  trained for as many epochs as dense training + fine-tuning.

    python benchmarks/ablation.py                     # seeds 0 1 2: 9-13 minutes on 2 shared cores
    python benchmarks/ablation.py --quick             # one seed, few epochs: a smoke run
    python benchmarks/ablation.py --json ablation.json --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import graphprune  # noqa: E402

CRITERIA = ("l1", "l2", "fpgm")
RATIO = 0.5
SIZE = 16
BATCH = 64


# ----------------------------------------------------------------------------- data


def load_data(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits, upsampled to size x size, standardised with the training set's
    mean and std; one fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    idx_train, idx_test = train_test_split(
        list(range(len(y))), test_size=0.3, stratify=digits.target, random_state=0
    )
    xtr, ytr, xte, yte = x[idx_train], y[idx_train], x[idx_test], y[idx_test]
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, ytr, (xte - mean) / std, yte


def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel (zero padding), per sample."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (n,), generator=generator)
    dx = torch.randint(0, 3, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n, h
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n, w
    batch = torch.arange(n).view(n, 1, 1)
    return padded[:, 0][batch, rows.view(n, h, 1), cols.view(n, 1, w)].unsqueeze(1)


# ----------------------------------------------------------------------------- model


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DigitResNet(nn.Module):
    """Stem 3x3 conv, stages (width, out, stride) x 2 bottleneck blocks each,
    global average pool, linear. ``mult`` scales every width."""

    STAGES = ((16, 64, 2), (32, 128, 2), (64, 256, 1))
    STEM = 32

    def __init__(self, mult: float = 1.0, blocks: int = 2, classes: int = 10):
        super().__init__()

        def c(n: int) -> int:
            return max(4, int(round(n * mult)))

        self.conv1 = nn.Conv2d(1, c(self.STEM), 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c(self.STEM))
        self.relu = nn.ReLU(inplace=True)
        cin, stages = c(self.STEM), []
        for width, cout, stride in self.STAGES:
            layers = []
            for b in range(blocks):
                layers.append(Bottleneck(cin, c(width), c(cout), stride if b == 0 else 1))
                cin = c(cout)
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def count_flops(model: nn.Module, size: int = SIZE) -> int:
    """FLOPs (2 x multiply-accumulates, convs and linears) of one 1 x 1 x size x size image."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 1, size, size))
    model.train(was_training)
    return int(counter.get_total_flops())


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- training


def train(model: nn.Module, data: tuple, epochs: int, lr: float, weight_decay: float, seed: int) -> float:
    """SGD with momentum 0.9, cosine learning rate, batch 64, random shifts.
    Returns the wall-clock seconds of the loop. Leaves the model in eval mode."""
    xtr, ytr = data[0], data[1]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps = epochs * ((len(ytr) + BATCH - 1) // BATCH)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(ytr), generator=generator)
        for i in range(0, len(ytr), BATCH):
            idx = order[i:i + BATCH]
            loss = F.cross_entropy(model(shift(xtr[idx], generator)), ytr[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    seconds = time.perf_counter() - start
    model.eval()
    return seconds


@torch.no_grad()
def accuracy(model: nn.Module, data: tuple) -> float:
    """Top-1 test accuracy in %, eval mode."""
    xte, yte = data[2], data[3]
    model.eval()
    pred = torch.cat([model(xte[i:i + 256]).argmax(1) for i in range(0, len(yte), 256)])
    return 100.0 * float((pred == yte).float().mean())


@torch.no_grad()
def agreement(a: nn.Module, b: nn.Module, data: tuple) -> float:
    """% of test images on which two models predict the same class (eval mode)."""
    xte = data[2]
    a.eval(), b.eval()
    return 100.0 * float((a(xte).argmax(1) == b(xte).argmax(1)).float().mean())


# ----------------------------------------------------------------------------- one seed


def run_seed(seed: int, data: tuple, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": seed}
    example = data[0][:64]
    ft = dict(epochs=args.finetune_epochs, lr=args.finetune_lr, weight_decay=1e-4)

    torch.manual_seed(seed)
    dense = DigitResNet()
    out["dense_train_s"] = train(dense, data, args.epochs, args.lr, 5e-4, seed)
    out["dense_acc"] = accuracy(dense, data)
    out["dense_params"], out["dense_flops"] = count_params(dense), count_flops(dense)
    log(f"seed {seed}: dense {out['dense_acc']:.2f} % ({out['dense_train_s']:.1f} s, "
        f"{out['dense_flops'] / 1e6:.2f} MFLOPs, {out['dense_params'] / 1e3:.1f} k params)")

    def prune(criterion: str, **kw: Any) -> graphprune.PruneResult:
        # no ignore=["fc"]: ignore keeps a module exactly as it is, inputs included, which would pin the
        # last residual stream whole; fc's outputs are pinned anyway (they reach the model output), and
        # the paper slices the classifier's inputs to the stream's union like every other consumer
        return graphprune.prune(dense.eval(), example, ratio=RATIO, criterion=criterion, mode="per_layer",
                                verify="report", **kw)

    for criterion in CRITERIA:
        row: dict[str, Any] = {}
        # --- Table 7, union (also Table 8 "BN masked", also 4.5.3 order A for l1)
        start = time.perf_counter()
        res = prune(criterion, coupling="union", mask_bn=True)
        row["union_prune_s"] = time.perf_counter() - start
        row["union_prune_exact"] = res.report.exact
        row["union_oneshot_acc"] = accuracy(res.masked, data)
        masked = res.masked
        row["union_ft_s"] = train(masked, data, seed=seed, **ft)
        row["union_masked_acc"] = accuracy(masked, data)
        start = time.perf_counter()
        rec = graphprune.reconstruct(masked, verify="report")
        row["union_reconstruct_s"] = time.perf_counter() - start
        row["union_compact_acc"] = accuracy(rec.compact, data)
        row["union_rel_err"] = rec.report.max_rel_error
        row["union_exact"] = rec.report.exact
        row["union_agree"] = agreement(masked, rec.compact, data)
        row["union_params"], row["union_flops"] = count_params(rec.compact), count_flops(rec.compact)
        row["union_report_flops"] = rec.report.flops_after
        if criterion == "l1":
            # --- 4.5.3 order B: prune -> reconstruct -> fine-tune the compact (same settings),
            # run right after order A so that a busy machine hurts both alike
            compact = res.compact
            row["order_b_oneshot_acc"] = accuracy(compact, data)
            row["order_b_ft_s"] = train(compact, data, seed=seed, **ft)
            row["order_b_acc"] = accuracy(compact, data)
            row["order_b_params"], row["order_b_flops"] = count_params(compact), count_flops(compact)

        # --- Table 7, intersection
        res = prune(criterion, coupling="intersection", mask_bn=True)
        masked = res.masked
        row["inter_ft_s"] = train(masked, data, seed=seed, **ft)
        row["inter_masked_acc"] = accuracy(masked, data)
        rec = graphprune.reconstruct(masked, verify="report")
        row["inter_compact_acc"] = accuracy(rec.compact, data)
        row["inter_rel_err"] = rec.report.max_rel_error
        row["inter_exact"] = rec.report.exact
        row["inter_params"], row["inter_flops"] = count_params(rec.compact), count_flops(rec.compact)

        # --- Table 8, without BN masking: one fine-tuned masked model, two reconstructions
        res = prune(criterion, coupling="union", mask_bn=False, fold_constants=False)
        masked = res.masked
        row["nobn_ft_s"] = train(masked, data, seed=seed, **ft)
        row["nobn_masked_acc"] = accuracy(masked, data)
        rec = graphprune.reconstruct(masked, verify="report", fold_constants=False)
        row["nobn_compact_acc"] = accuracy(rec.compact, data)
        row["nobn_rel_err"] = rec.report.max_rel_error
        row["nobn_agree"] = agreement(masked, rec.compact, data)
        rec = graphprune.reconstruct(masked, verify="report", fold_constants=True)
        row["fold_compact_acc"] = accuracy(rec.compact, data)
        row["fold_rel_err"] = rec.report.max_rel_error
        row["fold_exact"] = rec.report.exact
        row["fold_agree"] = agreement(masked, rec.compact, data)
        folds = rec.state.folds
        row["fold_layers"], row["fold_layers_exact"] = len(folds), sum(bool(f.exact) for f in folds)
        row["fold_notes"] = [n for n in rec.report.notes if "fold" in n or "exact" in n]
        out[criterion] = row
        log(f"seed {seed} {criterion}: union {row['union_masked_acc']:.2f} -> {row['union_compact_acc']:.2f}, "
            f"intersection {row['inter_masked_acc']:.2f} -> {row['inter_compact_acc']:.2f}, "
            f"no BN mask {row['nobn_masked_acc']:.2f} -> {row['nobn_compact_acc']:.2f} "
            f"(folded {row['fold_compact_acc']:.2f})")

    return out


def pick_narrow(target_flops: float) -> float:
    """The width multiplier whose dense model's FLOPs are closest to the target."""
    candidates = [m / 100 for m in range(20, 101)]
    return min(candidates, key=lambda m: abs(count_flops(DigitResNet(m)) - target_flops))


# ----------------------------------------------------------------------------- tables


def ms(values: list[float], digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def col(key: str, crit: str | None = None) -> list[float]:
        return [(r[crit] if crit else r)[key] for r in runs if key in (r[crit] if crit else r)]

    def stat(values: list[float]) -> dict[str, float]:
        return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "values": values}

    s: dict[str, Any] = {"dense_acc": stat(col("dense_acc")), "dense_flops": runs[0]["dense_flops"],
                         "dense_params": runs[0]["dense_params"]}
    for crit in CRITERIA:
        c: dict[str, Any] = {}
        for key in runs[0][crit]:
            values = col(key, crit)
            if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                c[key] = stat([float(v) for v in values])
        c["union_lost"] = stat([r[crit]["union_masked_acc"] - r[crit]["union_compact_acc"] for r in runs])
        c["inter_lost"] = stat([r[crit]["inter_masked_acc"] - r[crit]["inter_compact_acc"] for r in runs])
        c["nobn_lost"] = stat([r[crit]["nobn_masked_acc"] - r[crit]["nobn_compact_acc"] for r in runs])
        c["fold_lost"] = stat([r[crit]["nobn_masked_acc"] - r[crit]["fold_compact_acc"] for r in runs])
        s[crit] = c
    if "narrow_acc" in runs[0]:
        for key in ("narrow_acc", "narrow_flops", "narrow_params", "narrow_train_s", "dense_train_s"):
            s[key] = stat([float(r[key]) for r in runs])
        s["narrow_mult"] = runs[0]["narrow_mult"]
    return s


def tables(s: dict[str, Any], args: argparse.Namespace, n: int) -> str:
    def f(d: dict[str, Any], digits: int = 2) -> str:
        return ms(d["values"], digits)

    def e(d: dict[str, Any]) -> str:
        return f"{max(d['values']):.1e}"

    lines = []
    add = lines.append
    dense_m = s["dense_flops"] / 1e6
    add(f"\nTable 7: union vs intersection coupling, CR {RATIO}, per-layer, prune -> fine-tune masked -> "
        f"reconstruct (top-1 % on the test set, mean ± std over {n} seeds)")
    add(f"dense model: {f(s['dense_acc'])} %, {s['dense_params'] / 1e3:.1f} k params, {dense_m:.2f} MFLOPs")
    add("| criterion | coupling | masked fine-tuned | reconstructed | lost | k params | MFLOPs | max rel err |")
    add("|---|---|---|---|---|---|---|---|")
    for crit in CRITERIA:
        c = s[crit]
        add(f"| {crit} | union | {f(c['union_masked_acc'])} | {f(c['union_compact_acc'])} | {f(c['union_lost'])} | "
            f"{c['union_params']['mean'] / 1e3:.1f} | {c['union_flops']['mean'] / 1e6:.2f} | {e(c['union_rel_err'])} |")
        add(f"| {crit} | intersection | {f(c['inter_masked_acc'])} | {f(c['inter_compact_acc'])} | "
            f"{f(c['inter_lost'])} | {c['inter_params']['mean'] / 1e3:.1f} | {c['inter_flops']['mean'] / 1e6:.2f} | "
            f"{e(c['inter_rel_err'])} |")
    add("(one-shot, before fine-tuning, the union-masked models scored: "
        + ", ".join(f"{crit} {f(s[crit]['union_oneshot_acc'])} %" for crit in CRITERIA) + ")")

    add(f"\nTable 8: accuracy lost by reconstruction (masked fine-tuned minus reconstructed, points; mean ± std "
        f"over {n} seeds; max rel err = largest compact-vs-masked output error over the seeds)")
    add("| criterion | BN masked | not masked (constants lost) | not masked + graphprune folding |")
    add("|---|---|---|---|")
    for crit in CRITERIA:
        c = s[crit]
        add(f"| {crit} | {f(c['union_masked_acc'])} -> {f(c['union_compact_acc'])}: lost {f(c['union_lost'])} "
            f"(err {e(c['union_rel_err'])}) | {f(c['nobn_masked_acc'])} -> {f(c['nobn_compact_acc'])}: lost "
            f"{f(c['nobn_lost'])} (err {e(c['nobn_rel_err'])}) | {f(c['nobn_masked_acc'])} -> "
            f"{f(c['fold_compact_acc'])}: lost {f(c['fold_lost'])} (err {e(c['fold_rel_err'])}) |")
    add("predictions shared with the masked model (% of test images): "
        + "; ".join(f"{crit} {f(s[crit]['union_agree'])} / {f(s[crit]['nobn_agree'])} / {f(s[crit]['fold_agree'])}"
                    for crit in CRITERIA))
    add("folding: " + "; ".join(f"{crit} {s[crit]['fold_layers_exact']['mean']:.0f} of "
                                f"{s[crit]['fold_layers']['mean']:.0f} layers folded exactly" for crit in CRITERIA)
        + " (the rest are padded 3x3 convs, which see a constant channel only inside the border)")

    c = s["l1"]
    add(f"\nSection 4.5.3: the two orders (l1, CR {RATIO}, {args.finetune_epochs} fine-tuning epochs, same "
        f"optimizer; mean ± std over {n} seeds)")
    a_total = [p + t + r for p, t, r in zip(c["union_prune_s"]["values"], c["union_ft_s"]["values"],
                                            c["union_reconstruct_s"]["values"])]
    b_total = [p + t for p, t in zip(c["union_prune_s"]["values"], c["order_b_ft_s"]["values"])]
    add("| order | final top-1 % | fine-tuning s | reconstruct s | prune + fine-tune + reconstruct s | "
        "MFLOPs of the model fine-tuned |")
    add("|---|---|---|---|---|---|")
    add(f"| prune -> fine-tune masked -> reconstruct | {f(c['union_compact_acc'])} | {f(c['union_ft_s'])} | "
        f"{f(c['union_reconstruct_s'])} | {ms(a_total)} | {dense_m:.2f} (masked, full size) |")
    add(f"| prune -> reconstruct -> fine-tune compact | {f(c['order_b_acc'])} | {f(c['order_b_ft_s'])} | "
        f"0 (prune returns it) | {ms(b_total)} | {c['order_b_flops']['mean'] / 1e6:.2f} (compact) |")
    add(f"(prune, verified, took {f(c['union_prune_s'])} s; one-shot accuracy of the compact before fine-tuning "
        f"{f(c['order_b_oneshot_acc'])} %)")

    if "narrow_acc" in s:
        add(f"\nPruned wide vs dense narrow at about the same FLOPs ({args.epochs + args.finetune_epochs} epochs "
            f"each in all; mean ± std over {n} seeds)")
        add("| model | top-1 % | k params | MFLOPs | epochs |")
        add("|---|---|---|---|---|")
        for crit in CRITERIA:
            cc = s[crit]
            add(f"| wide x1.0, CR {RATIO} {crit} (union, reconstructed) | {f(cc['union_compact_acc'])} | "
                f"{cc['union_params']['mean'] / 1e3:.1f} | {cc['union_flops']['mean'] / 1e6:.2f} | "
                f"{args.epochs} + {args.finetune_epochs} |")
        add(f"| dense narrow x{s['narrow_mult']:.2f} | {f(s['narrow_acc'])} | {s['narrow_params']['mean'] / 1e3:.1f} | "
            f"{s['narrow_flops']['mean'] / 1e6:.2f} | {args.epochs + args.finetune_epochs} |")
        add(f"| dense wide x1.0 (before pruning) | {f(s['dense_acc'])} | {s['dense_params'] / 1e3:.1f} | "
            f"{dense_m:.2f} | {args.epochs} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=25, help="dense training epochs (default 25)")
    parser.add_argument("--finetune-epochs", type=int, default=8, help="fine-tuning epochs (default 8)")
    parser.add_argument("--lr", type=float, default=0.1, help="dense learning rate (cosine; default 0.1)")
    parser.add_argument("--finetune-lr", type=float, default=0.01, help="fine-tuning learning rate (default 0.01)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared 2-core machine, 2 threads were 10-50x slower)")
    parser.add_argument("--no-narrow", action="store_true", help="skip the dense narrow model")
    parser.add_argument("--quick", action="store_true", help="one seed, few epochs: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="write every number as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.finetune_epochs = args.seeds[:1], 4, 2

    torch.set_num_threads(args.threads)
    import sklearn
    import torchvision

    started = time.perf_counter()
    env = {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "sklearn": sklearn.__version__, "graphprune": graphprune.__version__, "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    print(f"machine: {env['platform']}, {env['cpu_count']} CPU cores, torch threads {env['torch_threads']}")
    print(f"versions: python {env['python']}, torch {env['torch']}, torchvision {env['torchvision']}, "
          f"scikit-learn {env['sklearn']}, graphprune {env['graphprune']}")
    data = load_data()
    print(f"data: sklearn digits upsampled to {SIZE}x{SIZE}, {len(data[1])} train / {len(data[3])} test "
          f"(stratified, fixed); dense {args.epochs} epochs lr {args.lr}, fine-tune {args.finetune_epochs} "
          f"epochs lr {args.finetune_lr}; seeds {args.seeds}", flush=True)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {msg}", flush=True)

    runs: list[dict[str, Any]] = []
    narrow_mult = None
    for seed in args.seeds:
        run = run_seed(seed, data, args, log)
        if not args.no_narrow:
            if narrow_mult is None:
                narrow_mult = pick_narrow(run["l1"]["union_flops"])
            torch.manual_seed(seed)
            narrow = DigitResNet(narrow_mult)
            run["narrow_mult"] = narrow_mult
            run["narrow_train_s"] = train(narrow, data, args.epochs + args.finetune_epochs, args.lr, 5e-4, seed)
            run["narrow_acc"] = accuracy(narrow, data)
            run["narrow_params"], run["narrow_flops"] = count_params(narrow), count_flops(narrow)
            log(f"seed {seed}: dense narrow x{narrow_mult:.2f} {run['narrow_acc']:.2f} % "
                f"({run['narrow_flops'] / 1e6:.2f} MFLOPs, {run['narrow_train_s']:.1f} s)")
        runs.append(run)

    summary = summarise(runs)
    text = tables(summary, args, len(runs))
    print(text)
    total = time.perf_counter() - started
    print(f"\ntotal wall time {total:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "args": vars(args), "ratio": RATIO, "summary": summary, "runs": runs,
                       "total_s": total}, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
