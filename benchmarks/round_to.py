"""Does rounding kept channel counts to 8 or 16 make the pruned model faster on this CPU?

For each model (torchvision, random weights, 1000 classes, seed 0) at
``--size`` x ``--size``: prune in global mode to ``--target-flops`` of the
dense FLOPs (so every variant does about the same work) with ``round_to`` 1, 8
and 16, export the dense and the three compact graphs to ONNX
(:func:`graphprune.onnx_export.export_onnx`, fixed batch 1), and time all four on
ONNX Runtime (CPU): ``--rounds`` rounds, each timing every variant for
``--runs`` runs in a rotating order (so a load change on the machine hits all
of them), latency = median of the round medians. Prints the machine, the
versions, a markdown table and a one-line conclusion.

The "blocked convs" column counts the convolutions ONNX Runtime's CPU
provider runs in its blocked NCHWc layout (``com.microsoft.nchwc:Conv`` in the
session's optimised graph), which it only does where channel counts fit its
block size; the others fall back to the plain im2col + GEMM path.

    python benchmarks/round_to.py
    python benchmarks/round_to.py --models resnet18 --size 160 --rounds 9 --threads 1
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import onnx
import onnxruntime as ort
import torch
import torchvision

import graphprune
from graphprune.onnx_export import export_onnx
from graphprune.onnx_latency import default_threads, measure_latency, open_session

ROUNDINGS = (1, 8, 16)
MODELS = "resnet18,resnet50,mobilenet_v3_large,efficientnet_b0"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    try:
        return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "load average n/a"


def machine(threads: int) -> str:
    return (
        f"{cpu_name()}, {default_threads()} cores available, ORT intra-op threads {threads}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, graphprune {graphprune.__version__}; {load()}"
    )


def time_interleaved(sessions: dict, x: torch.Tensor, rounds: int, runs: int) -> dict:
    """Median over rounds of each session's median, the order rotating every round."""
    medians: dict = {key: [] for key in sessions}
    keys = list(sessions)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[: r % len(keys)]
        for key in order:
            medians[key].append(measure_latency(sessions[key], x, warmup=2, runs=runs).median_ms)
    return {key: (statistics.median(v), min(v), max(v)) for key, v in medians.items()}


def export(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    """Batch 1, as an edge deployment runs it; checked on ONNX Runtime by export_onnx."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_onnx(model, x, path, dynamic_batch=False).path


def blocked_convs(path: Path, folder: Path) -> str:
    """How many convs ORT runs in the NCHWc layout, of all convs in its optimised graph."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the warning that the optimised file is hardware-specific
    options.optimized_model_filepath = str(folder / f"{path.stem}-ort.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(
        (n.domain, n.op_type) for n in onnx.load(options.optimized_model_filepath).graph.node
    )
    blocked = ops[("com.microsoft.nchwc", "Conv")]
    return f"{blocked}/{blocked + ops[('', 'Conv')] + ops[('com.microsoft', 'FusedConv')]}"


def bench_model(name: str, args: argparse.Namespace, folder: Path) -> list[dict]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    rows = []
    paths = {}
    for round_to in ROUNDINGS:
        result = graphprune.prune(model, x, mode="global", target_flops=args.target_flops, round_to=round_to)
        r = result.report
        if not rows:
            rows.append(dict(model=name, setting="dense", params=r.params_before, flops=r.flops_before))
            paths["dense"] = export(result.state.graph, x, folder / f"{name}-dense.onnx")
        rows.append(dict(model=name, setting=round_to, params=r.params_after, flops=r.flops_after))
        paths[round_to] = export(result.compact, x, folder / f"{name}-{round_to}.onnx")
    sessions = {key: open_session(path, threads=args.threads) for key, path in paths.items()}
    timed = time_interleaved(sessions, x, args.rounds, args.runs)
    for row in rows:
        row["ms"], row["ms_min"], row["ms_max"] = timed[row["setting"]]
        row["blocked"] = blocked_convs(paths[row["setting"]], folder)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="ORT intra-op threads (default: all cores)")
    args = parser.parse_args()
    threads = args.threads or default_threads()
    print(f"# round_to on {platform.node() or 'this machine'}: {machine(threads)}")
    print(f"# global mode, target_flops {args.target_flops}, {args.size}x{args.size}, batch 1; latency = median of "
          f"{args.rounds} interleaved rounds of {args.runs} runs (min-max of the round medians in brackets)\n")
    print("| model | round_to | params M | GFLOPs | FLOPs vs dense | blocked convs | ORT ms | speed-up vs dense "
          "| vs round_to=1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    gains: dict[int, list[float]] = {8: [], 16: []}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows = bench_model(name, args, Path(tmp))
            dense, base = rows[0], rows[1]
            for row in rows:
                vs1 = "" if row["setting"] == "dense" else f"{base['ms'] / row['ms']:.2f}x"
                if row["setting"] in gains:
                    gains[row["setting"]].append(base["ms"] / row["ms"])
                print(
                    f"| {row['model']} | {row['setting']} | {row['params'] / 1e6:.2f} | {row['flops'] / 1e9:.3f} | "
                    f"{row['flops'] / dense['flops']:.3f} | {row['blocked']} | {row['ms']:.2f} [{row['ms_min']:.2f}-{row['ms_max']:.2f}] | "
                    f"{dense['ms'] / row['ms']:.2f}x | {vs1} |",
                    flush=True,
                )
    print(f"\n# {time.perf_counter() - started:.0f} s; {load()}")
    parts = []
    for round_to, values in gains.items():
        median = statistics.median(values)
        verdict = ("faster" if median > 1.03 else "slower" if median < 0.97 else "no measurable difference")
        parts.append(f"round_to={round_to}: {verdict} than round_to=1 at the same FLOPs "
                     f"(median {median:.2f}x, range {min(values):.2f}-{max(values):.2f}x over {len(values)} models)")
    print("Conclusion on this CPU (ONNX Runtime, " + f"{threads} threads): " + "; ".join(parts) + ".")


if __name__ == "__main__":
    main()
