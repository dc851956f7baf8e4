#!/usr/bin/env python
"""Is the model graphprune hands a new user faster than the one it started from?

For each model (random weights, seed 0, 1x3x224x224; ultralytics yolov8n at
``--yolo-size``, 640 by default) this prunes *as the command line does*
``graphprune prune MODEL -o pruned.onnx`` with every default, in two settings:

- ``ratio 0.5``: ``graphprune prune MODEL -o pruned.onnx`` (per_layer, L1,
  ratio 0.5, verified);
- ``target_flops 0.5``: ``graphprune prune MODEL --target-flops 0.5 -o pruned.onnx``
  (implies global mode);
- with ``--trade-flops``, a third row: the same with ``--trade-flops`` (an
  option: channels ranked by score over the time a FLOP of theirs costs),
  summarised apart from the defaults.

The options come from the CLI's own parser (``build_parser`` and
``prune_options`` of ``graphprune.cli.arguments``), so ``round_to`` is
``"auto"`` exactly as the CLI resolves it for an ONNX output
(``graphprune/deploy.py``: ONNX Runtime's NCHWc block on this CPU). The dense
and the compact model are exported as the CLI exports them
(``graphprune.export_onnx`` with the CLI's ``deployed`` options: the dense file
from the traced graph, the compact one from ``result.compact``, dynamic batch,
the output contract only) and timed against each other with
``graphprune.compare_latency`` (ONNX Runtime CPU, ``--threads`` intra-op threads,
``--rounds`` interleaved rounds of ``--runs`` runs, medians).

Beside them, where Torch-Pruning prunes the model, a Torch-Pruning row at the
FLOPs graphprune's ``target_flops 0.5`` result reached: ``MetaPruner(model, x,
importance=MagnitudeImportance(p=1), pruning_ratio=r, ignored_layers=[last
Linear])`` (yolov8n: the ``Detect`` head ignored) with its defaults otherwise
(one uniform ratio per layer, no rounding), ``r`` found by a secant/bisection
search on measured FLOPs (at most ``--tp-search`` prunes, within 2 % of
graphprune's fraction). Its compact model is exported with the same exporter
and options as the dense file and timed against it the same way.

FLOPs are counted for every model alike with ``torch.utils.flop_counter``
(eval mode, the example input); "FLOPs ratio" is pruned / dense, "fraction of
ideal" is speed-up x FLOPs ratio (1.0: latency fell as much as FLOPs did).
"exact": graphprune's own verification (compact equals masked model,
``report.exact``); Torch-Pruning builds no masked model, so "-" there.

Every model runs in a fresh child process (``--timeout`` seconds): a model
that fails, crashes or times out is recorded with its error, and the
benchmark goes on; within a model each setting is tried on its own.

    python benchmarks/default_latency.py | tee default_latency.txt
    python benchmarks/default_latency.py --quick
    python benchmarks/default_latency.py --models resnet50 yolov8n --yolo-size 320 --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

MODELS = [
    "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "regnet_y_400mf",
    "shufflenet_v2_x1_0", "convnext_tiny", "densenet121", "yolov8n",
]
QUICK_MODELS = ["resnet18", "mobilenet_v2", "regnet_y_400mf"]
YOLO = {"yolov8n": "yolov8n.yaml"}
SETTINGS = {"ratio 0.5": [], "target_flops 0.5": ["--target-flops", "0.5"]}
#: with --trade-flops, one more row per model (an option, not a default: summarised apart)
TRADE_SETTING = {"target_flops 0.5 --trade-flops": ["--target-flops", "0.5", "--trade-flops"]}
TRADE_TOOL = "graphprune --trade-flops"
RESULT_TAG = "DEFAULT_LATENCY_RESULT "


def short_error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -- child side: one model -----------------------------------------------------

def build(name: str, yolo_size: int):
    """The model (eval mode, seed 0) and the CLI's example input (``randn``, seed 0)."""
    import torch

    torch.manual_seed(0)
    if name in YOLO:
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics.nn.tasks import DetectionModel

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = DetectionModel(YOLO[name], verbose=False).float().eval()
        shape = (1, 3, yolo_size, yolo_size)
    else:
        from graphprune.cli.models import build_model

        model = build_model(name)  # what the CLI builds: torchvision, weights=None, eval
        shape = (1, 3, 224, 224)
    return model, (torch.randn(shape, generator=torch.Generator().manual_seed(0)),)


def count_flops(model, inputs) -> int:
    """torch.utils.flop_counter's count (nn.MultiheadAttention's fused kernel and the CPU's attention kernel
    counted too: graphprune.flops.count_flops)."""
    from graphprune.flops import count_flops as counted

    return counted(model, tuple(inputs))


def cli_options(name: str, extra: list[str]) -> dict:
    """The options ``graphprune prune MODEL [extra] -o pruned.onnx`` passes to ``graphprune.prune``."""
    from graphprune.cli.arguments import build_parser, prune_options

    args = build_parser().parse_args(["prune", YOLO.get(name, name), *extra, "-o", "pruned.onnx"])
    return prune_options(args)


def timed(dense_path, compact_path, inputs, flops, args) -> dict[str, Any]:
    import graphprune

    cmp = graphprune.compare_latency(dense_path, compact_path, inputs, flops=flops, threads=args.threads,
                                     runs=args.runs, rounds=args.rounds)
    return {
        "dense_ms": cmp.dense.median_ms,
        "pruned_ms": cmp.compact.median_ms,
        "dense_p10_p90_ms": [cmp.dense.p10_ms, cmp.dense.p90_ms],
        "pruned_p10_p90_ms": [cmp.compact.p10_ms, cmp.compact.p90_ms],
        "speedup": cmp.speedup,
        "timed_runs": cmp.compact.runs,
        "ort_threads": cmp.compact.threads,
    }


def graphprune_row(name: str, setting: str, model, inputs, flops_dense: int, folder: Path,
                   dense: dict, args: argparse.Namespace) -> tuple[dict[str, Any], Any]:
    """One CLI-default prune, its export and its timing against the dense file."""
    import graphprune
    from graphprune.cli.commands import deployed

    row: dict[str, Any] = {"model": name, "setting": setting,
                           "tool": TRADE_TOOL if setting in TRADE_SETTING else "graphprune"}
    options = cli_options(name, {**SETTINGS, **TRADE_SETTING}[setting])
    row["options"] = {k: v for k, v in options.items() if v not in (None, ())}
    start = time.perf_counter()
    result = graphprune.prune(model, inputs, **options)
    row["prune_s"] = time.perf_counter() - start
    r = result.report
    row.update(exact=r.exact, max_rel_error=r.max_rel_error, notes=list(r.notes),
               report_flops_ratio=r.flops_after / r.flops_before if r.flops_before and r.flops_after else None,
               params_ratio=r.params_after / r.params_before if r.params_before and r.params_after else None)
    if r.budget is not None:
        row["budget"] = str(r.budget)
    row["flops_ratio"] = count_flops(result.compact, inputs) / flops_dense
    export_options = deployed(result)
    if "path" not in dense:  # the dense file, exported once, as the CLI exports it: from the traced graph
        info = graphprune.export_onnx(result.state.graph, inputs, folder / "dense.onnx", **export_options)
        dense.update(path=info.path, exporter=info.exporter, options=export_options)
    info = graphprune.export_onnx(result.compact, inputs, folder / f"gp_{setting.split()[0]}.onnx", **export_options)
    row["exporter"] = info.exporter
    row.update(timed(dense["path"], info.path, inputs, None, args))
    return row, result


def prune_torch_pruning(model, inputs, ratio: float, ignored: list):
    import torch_pruning as tp

    work = copy.deepcopy(model)
    pruner = tp.pruner.MetaPruner(work, inputs[0], importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=ignored(work))
    pruner.step()
    return work.eval()


def tp_ignored(name: str):
    """Torch-Pruning's ignored layers, given the (copied) model: the last Linear; yolov8n's Detect head."""
    import torch.nn as nn

    def pick(model) -> list:
        if name in YOLO:
            return [model.model[-1]]
        return [[m for m in model.modules() if isinstance(m, nn.Linear)][-1]]

    return pick


def torch_pruning_row(name: str, model, inputs, flops_dense: int, target: float, folder: Path,
                      dense: dict, args: argparse.Namespace) -> dict[str, Any]:
    """Torch-Pruning at ``target`` (pruned / dense FLOPs), by a search on its uniform ratio."""
    import graphprune

    row: dict[str, Any] = {"model": name, "setting": f"TP @ {target:.2f} FLOPs", "tool": "torch_pruning",
                           "target_flops_ratio": target, "exact": None}
    ignored = tp_ignored(name)
    tried: list[tuple[float, float]] = []  # (ratio, FLOPs fraction)
    best = None
    lo, hi = 0.0, 0.95  # FLOPs fall as the ratio grows
    ratio = 1 - target ** 0.5  # inner convs lose channels on both sides
    start = time.perf_counter()
    for _ in range(args.tp_search):
        pruned = prune_torch_pruning(model, inputs, ratio, ignored)
        frac = count_flops(pruned, inputs) / flops_dense
        tried.append((round(ratio, 4), round(frac, 4)))
        if best is None or abs(frac - target) < abs(best[1] - target):
            best = (ratio, frac, pruned)
        if abs(frac - target) <= 0.02 * target:
            break
        if frac > target:
            lo = ratio
        else:
            hi = ratio
        # secant through the two closest points on either side, kept inside the bracket
        above = [t for t in tried if t[1] > target]
        below = [t for t in tried if t[1] <= target]
        if above and below:
            (r1, f1), (r2, f2) = min(above, key=lambda t: t[1]), max(below, key=lambda t: t[1])
            guess = r1 + (target - f1) * (r2 - r1) / (f2 - f1)
        else:
            guess = (lo + hi) / 2
        ratio = guess if lo < guess < hi else (lo + hi) / 2
    row["search_s"] = time.perf_counter() - start
    ratio, frac, pruned = best
    row.update(pruning_ratio=ratio, flops_ratio=frac, tried=tried)
    info = graphprune.export_onnx(pruned, inputs, folder / "tp.onnx", **dense["options"])
    row["exporter"] = info.exporter
    row.update(timed(dense["path"], info.path, inputs, None, args))
    return row


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"model": name, "rows": [], "errors": [], "load_before": load_average()}
    start = time.perf_counter()
    try:
        model, inputs = build(name, args.yolo_size)
        flops_dense = count_flops(model, inputs)
    except Exception as exc:
        out["errors"].append(f"build: {short_error(exc)}")
        return out
    out["input_shape"] = list(inputs[0].shape)
    out["flops_dense"] = flops_dense
    dense: dict[str, Any] = {}
    gp_target = None
    with tempfile.TemporaryDirectory(prefix="default_latency_") as tmp:
        folder = Path(tmp)
        for setting in [*SETTINGS, *(TRADE_SETTING if args.trade_flops else ())]:
            try:
                row, result = graphprune_row(name, setting, model, inputs, flops_dense, folder, dense, args)
                out["rows"].append(row)
                if setting == "target_flops 0.5":
                    gp_target = row["flops_ratio"]
                del result
            except Exception as exc:
                out["errors"].append(f"graphprune {setting}: {short_error(exc)}")
        if not args.no_tp and "path" in dense:
            try:
                target = gp_target if gp_target is not None else 0.5
                out["rows"].append(torch_pruning_row(name, model, inputs, flops_dense, target, folder, dense, args))
            except Exception as exc:
                out["errors"].append(f"torch_pruning: {short_error(exc)}")
    out["dense_exporter"] = dense.get("exporter")
    out["seconds"] = time.perf_counter() - start
    out["load_after"] = load_average()
    return out


# -- parent side ---------------------------------------------------------------

def spawn(name: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--child", name, "--threads", str(args.threads),
               "--runs", str(args.runs), "--rounds", str(args.rounds), "--yolo-size", str(args.yolo_size),
               "--tp-search", str(args.tp_search)] + (["--no-tp"] if args.no_tp else []) + \
        (["--trade-flops"] if args.trade_flops else [])
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "rows": [], "errors": [f"timeout after {args.timeout:.0f} s"]}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": name, "rows": [], "errors": [f"child exited {proc.returncode}: {tail}"[:300]]}


def machine(args: argparse.Namespace) -> str:
    import onnxruntime
    import torch
    import torchvision

    import graphprune
    from graphprune.deploy import fast_channel_multiple

    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = [f"python {platform.python_version()}", f"torch {torch.__version__}",
                f"torchvision {torchvision.__version__}", f"onnxruntime {onnxruntime.__version__}",
                f"graphprune {graphprune.__version__}"]
    for module in ("torch_pruning", "ultralytics"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except ImportError:
            versions.append(f"{module} not installed")
    return (f"machine: {cpu}, {os.cpu_count()} cores, ORT and torch threads {args.threads}, "
            f"round_to auto = {fast_channel_multiple()} here; {', '.join(versions)}")


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def fraction_of_ideal(row: dict[str, Any]) -> float | None:
    if row.get("speedup") is None or row.get("flops_ratio") is None:
        return None
    return row["speedup"] * row["flops_ratio"]


def table(results: list[dict[str, Any]]) -> list[str]:
    head = ("| model | setting | dense ms | pruned ms | FLOPs ratio | speed-up | fraction of ideal "
            "| exact |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for res in results:
        for row in res["rows"]:
            exact = "-" if row.get("exact") is None else ("yes" if row["exact"] else "NO")
            setting = row["setting"] if row["tool"] != "torch_pruning" else (
                f"Torch-Pruning r={row['pruning_ratio']:.3f}")
            lines.append(
                f"| {res['model']} | {setting} | {fmt(row.get('dense_ms'), '.2f')} | {fmt(row.get('pruned_ms'), '.2f')} "
                f"| {fmt(row.get('flops_ratio'), '.3f')} | {fmt(row.get('speedup'), '.2f')}x "
                f"| {fmt(fraction_of_ideal(row), '.2f')} | {exact} |")
        for error in res["errors"]:
            lines.append(f"| {res['model']} | failed | | | | | | {error.replace('|', '/')} |")
    return lines


def summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [row for res in results for row in res["rows"] if row.get("speedup") is not None]
    out: dict[str, Any] = {}
    for tool in ("graphprune", "torch_pruning", TRADE_TOOL):
        mine = [r for r in rows if r["tool"] == tool]
        fractions = [fraction_of_ideal(r) for r in mine]
        out[tool] = {
            "rows": len(mine),
            "below_1x": [f"{r['model']} {r['setting']} {r['speedup']:.2f}x" for r in mine if r["speedup"] < 1.0],
            "median_fraction_of_ideal": statistics.median(fractions) if fractions else None,
            "min_fraction_of_ideal": min(fractions) if fractions else None,
            "median_speedup": statistics.median(r["speedup"] for r in mine) if mine else None,
            # per setting: the trade rows compare with the plain target_flops rows, not with all of them
            "median_fraction_by_setting": {
                setting: statistics.median(fraction_of_ideal(r) for r in mine if r["setting"] == setting)
                for setting in dict.fromkeys(r["setting"] for r in mine)},
            "median_speedup_by_setting": {
                setting: statistics.median(r["speedup"] for r in mine if r["setting"] == setting)
                for setting in dict.fromkeys(r["setting"] for r in mine)},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)}")
    parser.add_argument("--quick", action="store_true",
                        help=f"{', '.join(QUICK_MODELS)} only, fewer timing rounds (a smoke run)")
    parser.add_argument("--json", help="write every row, option and note here")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op (and torch) threads")
    parser.add_argument("--runs", type=int, default=None, help="runs per round of each model (default 10, quick 5)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 9, quick 3)")
    parser.add_argument("--yolo-size", type=int, default=640, help="yolov8n input size (default 640)")
    parser.add_argument("--tp-search", type=int, default=6, help="Torch-Pruning prunes to match the FLOPs")
    parser.add_argument("--no-tp", action="store_true", help="skip the Torch-Pruning rows")
    parser.add_argument("--trade-flops", action="store_true",
                        help="one more row per model: target_flops 0.5 with --trade-flops (summarised apart)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per model before it counts as failed")
    parser.add_argument("--child", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.runs = args.runs or (5 if args.quick else 10)
    args.rounds = args.rounds or (3 if args.quick else 9)
    if args.child:
        result = run_model(args.child, args)
        sys.stdout.write(RESULT_TAG + json.dumps(result, default=str) + "\n")
        return 0
    models = args.models or (QUICK_MODELS if args.quick else MODELS)

    print(machine(args))
    print(f"setting: graphprune CLI defaults for an ONNX output (ratio 0.5 per_layer; --target-flops 0.5), "
          f"224x224 (yolov8n {args.yolo_size}), batch 1, random weights; ORT CPU, {args.rounds} interleaved "
          f"rounds x {args.runs} runs, medians; load average {load_average()}", flush=True)
    start = time.perf_counter()
    results = []
    for name in models:
        res = spawn(name, args)
        results.append(res)
        done = ", ".join(f"{r['setting']} {r['speedup']:.2f}x @ {r['flops_ratio']:.2f} FLOPs"
                         for r in res["rows"] if "speedup" in r)
        errors = "; ".join(res["errors"])
        print(f"  [{time.perf_counter() - start:5.0f} s] {name}: {done}{' | ' + errors if errors else ''} "
              f"(load {res.get('load_before', '?')} -> {res.get('load_after', '?')})", flush=True)

    print()
    print("dense / pruned ms: ORT medians from the same interleaved comparison; FLOPs ratio: pruned / dense "
          "(torch.utils.flop_counter); fraction of ideal: speed-up x FLOPs ratio; exact: graphprune's "
          "verification (compact == masked)")
    print("\n".join(table(results)))
    s = summary(results)
    gp, tp = s["graphprune"], s["torch_pruning"]
    print(f"\nsummary: graphprune rows below 1.0x speed-up: {len(gp['below_1x'])} of {gp['rows']}"
          f"{' (' + '; '.join(gp['below_1x']) + ')' if gp['below_1x'] else ''}; median fraction of ideal "
          f"{fmt(gp['median_fraction_of_ideal'], '.2f')} (min {fmt(gp['min_fraction_of_ideal'], '.2f')}); "
          f"Torch-Pruning rows below 1.0x: {len(tp['below_1x'])} of {tp['rows']}, median fraction of ideal "
          f"{fmt(tp['median_fraction_of_ideal'], '.2f')}")
    for setting, median in gp["median_fraction_by_setting"].items():
        print(f"graphprune {setting}: median fraction of ideal {median:.2f}, median speed-up "
              f"{gp['median_speedup_by_setting'][setting]:.2f}x")
    trade = s[TRADE_TOOL]
    if trade["rows"]:
        print(f"with --trade-flops (target_flops 0.5): rows below 1.0x: {len(trade['below_1x'])} of "
              f"{trade['rows']}; median fraction of ideal {fmt(trade['median_fraction_of_ideal'], '.2f')} (min "
              f"{fmt(trade['min_fraction_of_ideal'], '.2f')})")
    printed: set[str] = set()
    for res in results:
        for row in res["rows"]:
            for note in row.get("notes", []):
                if note.startswith("round_to auto"):  # the same on every row: once
                    if note not in printed:
                        print(f"note (graphprune, every row): {note}")
                    printed.add(note)
                else:
                    print(f"note (graphprune, {res['model']} {row['setting']}): {note}")
    print(f"benchmark wall time: {time.perf_counter() - start:.0f} s; load average {load_average()}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"machine": machine(args), "args": vars(args), "summary": s,
                                               "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
