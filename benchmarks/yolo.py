"""The shape of the paper's Tables 4 and 5 with graphprune: YOLOv3 pruned at
CR 0.5 / 0.7 / 0.9 with L1, L2 and FPGM (per-layer, union), beside YOLOv3-tiny,
and the same for YOLOv8n. Params, FLOPs (torch.utils.flop_counter, 2 x MACs),
ONNX Runtime CPU latency (median) and speed-up vs the dense model.

    python benchmarks/yolo.py                         # 640x640, yolov3 + yolov8n
    python benchmarks/yolo.py --size 320 --runs 5 --models yolov8n.yaml

Models are ultralytics' yaml configs with random weights (no download). The
paper's YOLOv3 is the original anchor-based Darknet-53 model on Pascal VOC
(20 classes); ultralytics' yolov3.yaml is "YOLOv3u": the same Darknet-53
backbone and FPN, with ultralytics' anchor-free decoupled Detect head for 80
classes, which is much wider, so its dense params and FLOPs are higher.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

os.environ.setdefault("YOLO_OFFLINE", "1")

PAPER = """Paper (YOLOv3 on Pascal VOC; latency on a Raspberry Pi 4):
| model | GFLOPs | params M | RPi4 s | speed-up |
|---|---|---|---|---|
| YOLOv3 dense | 65.658 | 61.626 | 5.0755 | 1.00x |
| CR 0.5 | | | 1.5771 | 3.22x |
| CR 0.7 | | | 1.1880 | 4.27x |
| CR 0.9 L1 | 3.229 | 2.455 | 0.6227 | 8.15x |
| CR 0.9 L2 | 3.252 | 2.485 | | |
| CR 0.9 GM | 3.248 | 2.484 | | |
| YOLOv3-tiny | 5.518 | 8.714 | 0.6024 | 8.43x |"""


def build(name: str) -> torch.nn.Module:
    from ultralytics.nn.tasks import DetectionModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DetectionModel(name, verbose=False).eval()


def latency_ms(model: torch.nn.Module, x: torch.Tensor, workdir: Path, tag: str, runs: int, threads: int | None) -> float:
    from graphprune import export_onnx, measure_latency

    exported = export_onnx(model, x, workdir / f"{tag}.onnx", dynamic_batch=False, exporter="legacy")
    return measure_latency(exported.path, x, warmup=1, runs=runs, threads=threads).median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--runs", type=int, default=3, help="timed ONNX Runtime runs per model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default="yolov3.yaml,yolov8n.yaml")
    parser.add_argument("--ratios", default="0.5,0.7,0.9")
    parser.add_argument("--criteria", default="l1,l2,fpgm")
    args = parser.parse_args()

    import graphprune

    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            model = build(name)
            start = time.perf_counter()
            dense_ms = latency_ms(model, x, work, "dense", args.runs, args.threads)
            params = sum(p.numel() for p in model.parameters())
            flops = graphprune.passes.measure.count_flops(model, (x,))
            rows.append([name, "dense", "", params, flops, dense_ms, 1.0, True, 0.0])
            print(f"{name} dense: {dense_ms:.1f} ms ({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
            if name == "yolov3.yaml":
                tiny = build("yolov3-tiny.yaml")
                tiny_ms = latency_ms(tiny, x, work, "tiny", args.runs, args.threads)
                rows.append(["yolov3-tiny.yaml", "dense", "", sum(p.numel() for p in tiny.parameters()),
                             graphprune.passes.measure.count_flops(tiny, (x,)), tiny_ms, dense_ms / tiny_ms, True, 0.0])
            for ratio in [float(r) for r in args.ratios.split(",")]:
                for criterion in args.criteria.split(","):
                    start = time.perf_counter()
                    result = graphprune.prune(model, x, ratio=ratio, criterion=criterion, mode="per_layer")
                    compile_s = result.report.compile_seconds
                    ms = latency_ms(result.compact, x, work, f"{ratio}-{criterion}", args.runs, args.threads)
                    r = result.report
                    rows.append([name, f"CR {ratio}", criterion, r.params_after, r.flops_after, ms, dense_ms / ms,
                                 r.exact, compile_s])
                    print(f"{name} CR {ratio} {criterion}: {ms:.1f} ms, exact={r.exact} "
                          f"({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)

    threads = args.threads or len(os.sched_getaffinity(0))
    print(f"graphprune on ultralytics configs, {args.size}x{args.size}, ONNX Runtime CPU, {threads} threads, "
          f"median of {args.runs} runs; torch {torch.__version__}")
    print("| model | setting | criterion | params M | GFLOPs | ORT ms | speed-up | exact | compile s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model, setting, criterion, params, flops, ms, speedup, exact, compile_s in rows:
        print(f"| {model} | {setting} | {criterion} | {params / 1e6:.3f} | {flops / 1e9:.3f} | {ms:.1f} | "
              f"{speedup:.2f}x | {exact} | {compile_s:.1f} |")
    print()
    print(PAPER)


if __name__ == "__main__":
    main()
