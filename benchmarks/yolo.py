"""The shape of the paper's Tables 4 and 5 with graphprune: YOLOv3 pruned at
CR 0.5 / 0.7 / 0.9 with L1, L2 and FPGM (per-layer, union), beside YOLOv3-tiny,
and the same for YOLOv8n. Params, FLOPs (torch.utils.flop_counter, 2 x MACs),
the share of each kept beside the paper's, ONNX Runtime CPU latency (median)
and speed-up vs the dense model.

    python benchmarks/yolo.py                         # 640x640, yolov3 + yolov8n
    python benchmarks/yolo.py --size 320 --runs 5 --models yolov8n.yaml

Models are ultralytics' yaml configs with random weights (no download). The
paper's YOLOv3 is the original anchor-based Darknet-53 model on Pascal VOC
(20 classes); ultralytics' yolov3.yaml is "YOLOv3u": the same Darknet-53
backbone and FPN, with ultralytics' anchor-free decoupled Detect head for 80
classes, which is much wider, so its dense params and FLOPs are higher.

Pruning uses graphprune's default output contract: for ultralytics models the
prediction tensor only (what ``YOLO.export(format="onnx")`` emits), so
channels reaching only the auxiliary ``feats`` outputs are pruned. Dense and
compact models are timed as the ONNX the CLI writes for that contract: the
prediction tensor alone, named ``images`` -> ``output0``.
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

# The paper's YOLOv3 rows as (params kept %, FLOPs kept %, RPi4 speed-up), keyed
# by (setting, criterion); a blank where the paper gives no number.
PAPER_PARAMS_M, PAPER_GFLOPS = 61.626, 65.658
PAPER_ROWS = {
    ("CR 0.5", "l1"): (None, None, 3.22),
    ("CR 0.7", "l1"): (None, None, 4.27),
    ("CR 0.9", "l1"): (2.455, 3.229, 8.15),
    ("CR 0.9", "l2"): (2.485, 3.252, None),
    ("CR 0.9", "fpgm"): (2.484, 3.248, None),
    ("dense", "tiny"): (8.714, 5.518, 8.43),
}


def paper_cells(model: str, setting: str, criterion: str) -> list[str]:
    key = ("dense", "tiny") if model == "yolov3-tiny.yaml" else (setting, criterion)
    if not model.startswith("yolov3") or key not in PAPER_ROWS:
        return ["", "", ""]
    params, flops, speedup = PAPER_ROWS[key]
    return [f"{100 * params / PAPER_PARAMS_M:.1f}" if params else "",
            f"{100 * flops / PAPER_GFLOPS:.1f}" if flops else "",
            f"{speedup:.2f}x" if speedup else ""]


def build(name: str, seed: int) -> torch.nn.Module:
    """``name``'s random weights, drawn from ``seed``: with union coupling the
    kept channel counts depend on the weights, so unseeded runs differ."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DetectionModel(name, verbose=False).eval()


def contract_options(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """The export options of the CLI's ONNX for ``model`` under graphprune's
    default output contract (for a model not pruned here: the dense ones)."""
    from graphprune.contract import defaults, is_ultralytics, resolve

    with torch.no_grad():
        out = model(x)
    paths = resolve(defaults(model, out)[0], out)
    options: dict = {"outputs": paths}
    if is_ultralytics(model) and paths is not None:
        options.update(input_names=("images",), output_names=tuple(f"output{i}" for i in range(len(paths))))
    return options


def export(model: torch.nn.Module, x: torch.Tensor, workdir: Path, tag: str, options: dict) -> Path:
    from graphprune import export_onnx

    return export_onnx(model, x, workdir / f"{tag}.onnx", dynamic_batch=False, exporter="legacy", **options).path


def timed(dense: Path, other: Path, x: torch.Tensor, runs: int, threads: int | None) -> tuple[float, float]:
    """(dense ms, other ms): medians of ``runs`` interleaved rounds of one run
    each, as the CLI times them, so that a load change hits both."""
    from graphprune.onnx_latency import compare_latency

    cmp = compare_latency(dense, other, x, warmup=1, runs=1, rounds=runs, threads=threads)
    return cmp.dense.median_ms, cmp.compact.median_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--runs", type=int, default=3,
                        help="timed ONNX Runtime runs per model (interleaved rounds with the dense model)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", default="yolov3.yaml,yolov8n.yaml")
    parser.add_argument("--ratios", default="0.5,0.7,0.9")
    parser.add_argument("--criteria", default="l1,l2,fpgm")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models' random weights")
    args = parser.parse_args()

    import graphprune
    from graphprune.cli.commands import deployed
    from graphprune.flops import count_flops
    from graphprune.onnx_latency import measure_latency

    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            model = build(name, args.seed)
            start = time.perf_counter()
            dense_options = contract_options(model, x)
            dense_onnx = export(model, x, work, "dense", dense_options)
            dense_ms = measure_latency(dense_onnx, x, warmup=1, runs=args.runs, threads=args.threads).median_ms
            params = sum(p.numel() for p in model.parameters())
            flops = count_flops(model, (x,))
            rows.append([name, "dense", "", params, params, flops, flops, dense_ms, dense_ms, True, 0.0, ""])
            print(f"{name} dense: {dense_ms:.1f} ms, ONNX outputs {dense_options.get('output_names')} "
                  f"({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
            if name == "yolov3.yaml":
                tiny = build("yolov3-tiny.yaml", args.seed)
                tiny_onnx = export(tiny, x, work, "tiny", contract_options(tiny, x))
                versus, tiny_ms = timed(dense_onnx, tiny_onnx, x, args.runs, args.threads)
                tiny_params = sum(p.numel() for p in tiny.parameters())
                tiny_flops = count_flops(tiny, (x,))
                rows.append(["yolov3-tiny.yaml", "dense", "", tiny_params, params, tiny_flops, flops, tiny_ms,
                             versus, True, 0.0, ""])
            for ratio in [float(r) for r in args.ratios.split(",")]:
                for criterion in args.criteria.split(","):
                    start = time.perf_counter()
                    result = graphprune.prune(model, x, ratio=ratio, criterion=criterion, mode="per_layer")
                    r = result.report
                    options = deployed(result)  # what the CLI writes: the contract's outputs, ultralytics' names
                    if options["outputs"] != dense_options["outputs"]:
                        raise SystemExit(f"{name}: the compact model's contract {options['outputs']} is not "
                                         f"the dense one's {dense_options['outputs']}")
                    if r.params_before != params or r.flops_before != flops:
                        print(f"warning: {name}: the report's dense params/FLOPs {r.params_before}/{r.flops_before}"
                              f" differ from the benchmark's {params}/{flops}", file=sys.stderr)
                    compact_params = sum(p.numel() for p in result.compact.parameters())
                    compact_flops = count_flops(result.compact, (x,))
                    if (compact_params, compact_flops) != (r.params_after, r.flops_after):
                        print(f"warning: {name} CR {ratio} {criterion}: the report's params/FLOPs "
                              f"{r.params_after}/{r.flops_after} differ from the compact model's counted "
                              f"{compact_params}/{compact_flops} (the table has the counted ones)", file=sys.stderr)
                    versus, ms = timed(dense_onnx, export(result.compact, x, work, f"{ratio}-{criterion}", options),
                                       x, args.runs, args.threads)
                    pinned = sum(r.pinned.values())
                    rows.append([name, f"CR {ratio}", criterion, compact_params, params, compact_flops, flops, ms,
                                 versus, r.exact, r.compile_seconds, str(pinned)])
                    for where, (before, after) in r.reduced_outputs.items():
                        print(f"  {where}: {before} -> {after} channels (not in the output contract)",
                              file=sys.stderr)
                    print(f"{name} CR {ratio} {criterion}: {ms:.1f} ms (dense {versus:.1f} ms), "
                          f"params {100 * compact_params / params:.1f} %,"
                          f" FLOPs {100 * compact_flops / flops:.1f} %, pinned {pinned}, exact={r.exact} "
                          f"({time.perf_counter() - start:.0f}s; compile {r.compile_seconds:.1f}s: "
                          + ", ".join(f"{k} {v:.1f}" for k, v in r.timings.items()) + ")",
                          file=sys.stderr, flush=True)

    threads = args.threads or len(os.sched_getaffinity(0))
    print(f"graphprune on ultralytics configs, {args.size}x{args.size}, default output contract (predictions only), "
          f"weights seed {args.seed}, ONNX Runtime CPU, {threads} threads, median of {args.runs} runs "
          "(speed-up: vs the dense model in the same interleaved rounds); "
          f"torch {torch.__version__}")
    print("| model | setting | criterion | params M | params kept % | GFLOPs | FLOPs kept % | ORT ms "
          "| dense ORT ms, same rounds | speed-up | exact | compile s | pinned channels "
          "| paper params kept % | paper FLOPs kept % | paper speed-up (RPi4) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model, setting, criterion, params, dense_params, flops, dense_flops, ms, versus, exact, compile_s, pinned \
            in rows:
        paper = " | ".join(paper_cells(model, setting, criterion))
        print(f"| {model} | {setting} | {criterion} | {params / 1e6:.3f} | {100 * params / dense_params:.1f} | "
              f"{flops / 1e9:.3f} | {100 * flops / dense_flops:.1f} | {ms:.1f} | {versus:.1f} | {versus / ms:.2f}x | "
              f"{exact} | {compile_s:.1f} | {pinned} | {paper} |")
    print()
    print(PAPER)


if __name__ == "__main__":
    main()
