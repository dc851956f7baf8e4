"""Recovery training of a pruned YOLOv8n in ultralytics, end to end, on CPU.

On a synthetic detection set it writes (coloured rectangles on noise, one
class per colour; train and val splits), it trains yolov8n from its yaml
(random init) for a few epochs, then for each compression ratio it prunes the
trained model (per-layer L1, union coupling) and reports ultralytics'
mAP50 and mAP50-95 on the val split for

* one-shot: the compact model straight out of ``graphprune.prune``;
* masked fine-tune: ``result.masked`` trained K epochs with ultralytics'
  DetectionTrainer (``graphprune.integrations.ultralytics.train``);
* reconstructed: ``graphprune.reconstruct`` of that trained masked model,
  whose mAP must equal the masked model's (both printed, and the difference);
* compact fine-tune: the other order, reconstruct first (``result.compact``)
  and train the compact model K epochs;

with params, FLOPs (``report.flops_before/after``, at the training size),
ONNX Runtime latency of dense vs compact (``graphprune.compare_latency``;
at imgsz by default, where a model this small is dominated by per-operator
overhead), and the time of every stage and of the whole run.

    python benchmarks/yolo_finetune.py                  # defaults, about 28 minutes on 2 busy cores
    python benchmarks/yolo_finetune.py --quick          # a smoke run, about 4 minutes on 2 cores
    python benchmarks/yolo_finetune.py --ratios 0.5 --finetune-epochs 3 --json out.json
    python benchmarks/yolo_finetune.py --latency-size 640    # time ONNX Runtime at 640 (FLOPs recounted there)
    python benchmarks/yolo_finetune.py --round-to auto       # channel counts in ONNX Runtime's block (faster there)

Everything runs offline on CPU (``device="cpu"``, ``workers=0``, no plots, no
AMP); ultralytics' run folders go under a temporary directory. Every model is
validated the same way: saved with ``save_checkpoint`` (a masked model with its
masks applied) and loaded by ``ultralytics.YOLO(path).val``. ultralytics picks
``best.pt`` of each training run by its fitness on the same val split, as its
trainer does. Seeded throughout (data, model init, ultralytics ``seed=``,
``deterministic=True``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")

DEFAULTS = dict(train=1000, val=200, size=96, classes=3, dense_epochs=20, finetune_epochs=5, batch=16)
QUICK = dict(train=300, val=50, size=64, classes=3, dense_epochs=15, finetune_epochs=3, batch=16)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class Stages:
    """ultralytics train / val calls with the fixed offline CPU arguments, each timed."""

    def __init__(self, data: Path, work: Path, args: argparse.Namespace):
        self.data, self.work = data, work
        self.common = dict(imgsz=args.imgsz, batch=args.batch, device="cpu", workers=0, plots=False, amp=False,
                           verbose=False, exist_ok=True, project=str(work / "runs"))
        self.seed = args.seed

    def train(self, model: torch.nn.Module, name: str, epochs: int) -> tuple[torch.nn.Module, float]:
        from graphprune.integrations import ultralytics as gpu

        seed_everything(self.seed)
        start = time.perf_counter()
        trained = gpu.train(model, data=str(self.data), epochs=epochs, name=name, seed=self.seed,
                            deterministic=True, **self.common)
        return trained, time.perf_counter() - start

    def val(self, model: torch.nn.Module, name: str) -> tuple[float, float, float]:
        """(mAP50, mAP50-95, seconds) of ``YOLO(save_checkpoint(model)).val`` on the val split."""
        from ultralytics import YOLO

        from graphprune.integrations import ultralytics as gpu

        start = time.perf_counter()
        path = gpu.save_checkpoint(model, self.work / "checkpoints" / f"{name}.pt")
        metrics = YOLO(str(path)).val(data=str(self.data), name=f"val-{name}", **self.common)
        return float(metrics.box.map50), float(metrics.box.map), time.perf_counter() - start


def row(ratio, stage, kind, model, flops, metrics, work_s) -> dict:
    map50, map5095, val_s = metrics
    return dict(ratio=ratio, stage=stage, kind=kind, params=parameters(model), flops=flops, map50=map50,
                map=map5095, work_s=work_s, val_s=val_s)


def latency(dense, compact, flops, work: Path, tag: str, args) -> dict:
    """Dense vs compact on ONNX Runtime (exported here, timed in interleaved rounds) at --latency-size;
    ``flops`` are the report's (at imgsz), recounted when the latency size differs."""
    import graphprune
    from graphprune.flops import count_flops

    start = time.perf_counter()
    size = args.latency_size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
    if size != args.imgsz:
        flops = tuple(count_flops(m.eval(), (x,)) for m in (dense, compact))
    paths = []
    for name, model in (("dense", dense), (tag, compact)):
        path = work / "onnx" / f"{name}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        graphprune.export_onnx(model.eval(), x, path)
        paths.append(path)
    cmp = graphprune.compare_latency(*paths, x, flops=flops, rounds=args.rounds, runs=args.runs,
                                     threads=args.threads)
    return dict(dense_ms=cmp.dense.median_ms, compact_ms=cmp.compact.median_ms, speedup=cmp.speedup,
                dense_p90_ms=cmp.dense.p90_ms, compact_p90_ms=cmp.compact.p90_ms, flops=flops,
                flops_ratio=cmp.flops_ratio, seconds=time.perf_counter() - start)


def prune_and_recover(dense, ratio: float, x, stages: Stages, args) -> tuple[list[dict], dict]:
    """Every stage at one compression ratio: rows of the table, and the reconstruction/latency record."""
    import graphprune

    tag = f"cr{ratio:g}"
    start = time.perf_counter()
    result = graphprune.prune(dense.eval(), x, ratio=ratio, criterion=args.criterion, mode="per_layer",
                              round_to=args.round_to)
    prune_s = time.perf_counter() - start
    before, after = result.report.flops_before, result.report.flops_after
    log(f"CR {ratio}: pruned in {prune_s:.1f}s, params {result.report.params_before:,} -> "
        f"{result.report.params_after:,}, exact={result.report.exact}")
    rows = [row(ratio, "one-shot", "compact", result.compact, after, stages.val(result.compact, f"{tag}-oneshot"),
                prune_s)]

    masked, train_s = stages.train(result.masked, f"{tag}-masked", args.finetune_epochs)
    rows.append(row(ratio, f"masked fine-tune {args.finetune_epochs} ep", "masked", masked, before,
                    stages.val(masked, f"{tag}-masked"), train_s))
    log(f"CR {ratio}: masked fine-tune {train_s:.0f}s, mAP50-95 {rows[-1]['map']:.4f}")

    start = time.perf_counter()
    rebuilt = graphprune.reconstruct(masked)
    rec_s = time.perf_counter() - start
    rows.append(row(ratio, "reconstructed (of masked fine-tune)", "compact", rebuilt.compact,
                    rebuilt.report.flops_after,
                    stages.val(rebuilt.compact, f"{tag}-reconstructed"), rec_s))

    compact, train_s = stages.train(result.compact, f"{tag}-compact", args.finetune_epochs)
    rows.append(row(ratio, f"compact fine-tune {args.finetune_epochs} ep", "compact", compact, after,
                    stages.val(compact, f"{tag}-compact"), train_s))
    log(f"CR {ratio}: compact fine-tune {train_s:.0f}s, mAP50-95 {rows[-1]['map']:.4f}")

    record = dict(ratio=ratio, masked_map=rows[1]["map"], reconstructed_map=rows[2]["map"],
                  masked_map50=rows[1]["map50"], reconstructed_map50=rows[2]["map50"],
                  exact=rebuilt.report.exact, max_abs_error=rebuilt.report.max_abs_error,
                  params_before=result.report.params_before, params_after=result.report.params_after,
                  flops_before=before, flops_after=after,
                  latency=latency(dense, rebuilt.compact, (before, after), stages.work, tag, args))
    return rows, record


def print_tables(meta: dict, rows: list[dict], records: list[dict]) -> None:
    dense = rows[0]
    print(f"yolov8n on a synthetic detection set ({meta['train']} train / {meta['val']} val images, "
          f"{meta['size']} px, {meta['classes']} classes), imgsz {meta['imgsz']}, CPU, seed {meta['seed']}; "
          f"dense {meta['dense_epochs']} epochs from yaml, fine-tune {meta['finetune_epochs']} epochs; "
          f"per-layer {meta['criterion']}, round_to {meta['round_to']}; ultralytics {meta['ultralytics']}, torch {meta['torch']}")
    print("| CR | stage | model | params M | GFLOPs | mAP50 | mAP50-95 | vs dense | stage s | val s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cr = "dense" if r["ratio"] is None else f"{r['ratio']:g}"
        print(f"| {cr} | {r['stage']} | {r['kind']} | {r['params'] / 1e6:.3f} | {r['flops'] / 1e9:.3f} | "
              f"{r['map50']:.4f} | {r['map']:.4f} | {r['map'] - dense['map']:+.4f} | {r['work_s']:.1f} | "
              f"{r['val_s']:.1f} |")
    print()
    print("Reconstruction vs the trained masked model (ultralytics val, mAP50-95 / mAP50):")
    print("| CR | masked mAP50-95 | reconstructed mAP50-95 | difference | masked mAP50 | reconstructed mAP50 | "
          "difference | verified exact | max abs error |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in records:
        err = "n/a" if r["max_abs_error"] is None else f"{r['max_abs_error']:.2e}"
        print(f"| {r['ratio']:g} | {r['masked_map']:.6f} | {r['reconstructed_map']:.6f} | "
              f"{r['reconstructed_map'] - r['masked_map']:+.6f} | {r['masked_map50']:.6f} | "
              f"{r['reconstructed_map50']:.6f} | {r['reconstructed_map50'] - r['masked_map50']:+.6f} | "
              f"{r['exact']} | {err} |")
    same = all(r["reconstructed_map"] == r["masked_map"] and r["reconstructed_map50"] == r["masked_map50"]
               for r in records)
    print(f"Reconstructed mAP == masked mAP at every CR: {same}; verified exact at every CR: "
          f"{all(r['exact'] for r in records)}")
    print()
    print(f"ONNX Runtime CPU, 1x3x{meta['latency_size']}x{meta['latency_size']}, {meta['threads']} threads, "
          f"median of {meta['rounds']} interleaved rounds x {meta['runs']} runs (dense vs reconstructed compact):")
    print("| CR | params | GFLOPs | dense ms (p90) | compact ms (p90) | speed-up | FLOPs ratio |")
    print("|---|---|---|---|---|---|---|")
    for r in records:
        lat = r["latency"]
        print(f"| {r['ratio']:g} | {r['params_before'] / 1e6:.3f}M -> {r['params_after'] / 1e6:.3f}M | "
              f"{lat['flops'][0] / 1e9:.3f} -> {lat['flops'][1] / 1e9:.3f} | {lat['dense_ms']:.2f} "
              f"({lat['dense_p90_ms']:.2f}) | {lat['compact_ms']:.2f} ({lat['compact_p90_ms']:.2f}) | "
              f"{lat['speedup']:.2f}x | {lat['flops_ratio']:.2f}x |")
    print()
    print("Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in meta["stage_seconds"].items())
          + f"; whole run {meta['total_seconds']:.0f} s")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (about 4 minutes on 2 cores); "
                        "flags given explicitly still override it")
    parser.add_argument("--train", type=int, help=f"train images (default {DEFAULTS['train']})")
    parser.add_argument("--val", type=int, help=f"val images (default {DEFAULTS['val']})")
    parser.add_argument("--size", type=int, help=f"image size of the dataset in px (default {DEFAULTS['size']})")
    parser.add_argument("--classes", type=int, help=f"colour classes, 1-4 (default {DEFAULTS['classes']})")
    parser.add_argument("--imgsz", type=int, help="ultralytics imgsz (default: --size)")
    parser.add_argument("--dense-epochs", type=int, help=f"dense epochs (default {DEFAULTS['dense_epochs']})")
    parser.add_argument("--finetune-epochs", type=int, help=f"K (default {DEFAULTS['finetune_epochs']})")
    parser.add_argument("--batch", type=int, help=f"batch size (default {DEFAULTS['batch']})")
    parser.add_argument("--ratios", default="0.5,0.7")
    parser.add_argument("--criterion", default="l1")
    parser.add_argument("--round-to", type=lambda s: s if s == "auto" else int(s), default=1,
                        help="kept channels per group rounded to a multiple of this (default 1: exact counts, the "
                        "API's default; 'auto': ONNX Runtime's NCHWc block on this CPU, faster there)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved ONNX Runtime timing rounds")
    parser.add_argument("--runs", type=int, default=10, help="timed runs per round")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument("--latency-size", type=int, help="input size for ONNX Runtime latency (default: --imgsz)")
    parser.add_argument("--keep", type=Path, help="write the dataset, runs and checkpoints here (kept)")
    parser.add_argument("--verbose", action="store_true", help="show ultralytics' own logs")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.imgsz = args.imgsz or args.size
    args.latency_size = args.latency_size or args.imgsz
    return args


def run(args: argparse.Namespace, work: Path) -> tuple[dict, list[dict], list[dict]]:
    import ultralytics
    from ultralytics.nn.tasks import DetectionModel

    from graphprune.integrations.synthetic import write_detection_dataset

    stage_seconds, t0 = {}, time.perf_counter()
    data = write_detection_dataset(work / "data", train=args.train, val=args.val, size=args.size,
                                   classes=args.classes, seed=args.seed)
    stage_seconds["data"] = time.perf_counter() - t0
    stages = Stages(data, work, args)
    seed_everything(args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DetectionModel("yolov8n.yaml", nc=args.classes, verbose=False)
    dense, train_s = stages.train(model, "dense", args.dense_epochs)
    stage_seconds["dense train"] = train_s
    x = torch.randn(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(args.seed))
    rows = [row(None, f"dense {args.dense_epochs} ep", "dense", dense, None, stages.val(dense, "dense"), train_s)]
    log(f"dense: {train_s:.0f}s, mAP50-95 {rows[0]['map']:.4f}")
    records = []
    for ratio in [float(r) for r in args.ratios.split(",")]:
        start = time.perf_counter()
        ratio_rows, record = prune_and_recover(dense, ratio, x, stages, args)
        rows += ratio_rows
        records.append(record)
        rows[0]["flops"] = rows[0]["flops"] or record["flops_before"]  # the dense model's, from report.flops_before
        stage_seconds[f"CR {ratio:g} (all stages)"] = time.perf_counter() - start
        stage_seconds[f"CR {ratio:g} ONNX export+latency"] = record["latency"]["seconds"]
    meta = {k: getattr(args, k) for k in ("train", "val", "size", "classes", "imgsz", "dense_epochs",
                                          "finetune_epochs", "batch", "criterion", "round_to", "seed", "rounds",
                                          "runs", "threads", "latency_size")}
    meta.update(ultralytics=ultralytics.__version__, torch=torch.__version__, stage_seconds=stage_seconds)
    return meta, rows, records


def main() -> None:
    args = parse_args()
    if not args.verbose:
        from ultralytics.utils import LOGGER

        LOGGER.setLevel(logging.WARNING)  # also turns off ultralytics' progress bars
    start = time.perf_counter()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        meta, rows, records = run(args, args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="yolo_finetune_") as tmp:
            meta, rows, records = run(args, Path(tmp))
    meta["total_seconds"] = time.perf_counter() - start
    print_tables(meta, rows, records)
    if args.json:
        args.json.write_text(json.dumps(dict(meta=meta, rows=rows, reconstruction=records), indent=2))


if __name__ == "__main__":
    main()
