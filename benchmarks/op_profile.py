#!/usr/bin/env python
"""Where a pruned model's ONNX Runtime time goes, per op type, beside the dense model's.

Each model is built and pruned exactly as ``benchmarks/default_latency.py``
does it (the CLI's options for ``graphprune prune MODEL -o pruned.onnx``,
``--setting "ratio 0.5"`` or ``"target_flops 0.5"``), dense and pruned files
exported as the CLI exports them, then each run ``--runs`` times in an ONNX
Runtime session with profiling on (CPU, ``--threads`` threads, the runtime's
default graph optimisations). Rows: each op type's kernel time per run
(the profile's ``*_kernel_time`` events, summed), dense and pruned, and the
speed-up of that op type; convolutions are split into grouped/depthwise
(``group > 1``) and the rest. An op type whose speed-up is far below
1 / FLOPs ratio is where latency does not follow the FLOPs.

    python benchmarks/op_profile.py --models efficientnet_b0 --setting "target_flops 0.5"
    python benchmarks/op_profile.py --models yolov8n --setting "ratio 0.5" --yolo-size 640
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from default_latency import SETTINGS, build, cli_options, count_flops  # noqa: E402


def conv_kinds(path: Path) -> dict[str, str]:
    """ONNX Conv node name -> "conv (grouped)" or "conv"."""
    import onnx

    kinds = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            kinds[node.name] = "Conv (grouped)" if group > 1 else "Conv"
    return kinds


def profile(path: Path, inputs, threads: int, runs: int) -> dict[str, float]:
    """Op type -> kernel ms per run."""
    import onnxruntime as ort

    kinds = conv_kinds(path)
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    for _ in range(3):
        session.run(None, feed)
    trace = session.end_profiling()  # the warm-up runs are in it too: start a fresh session
    Path(trace).unlink(missing_ok=True)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        session.run(None, feed)
    trace = Path(session.end_profiling())
    per_op: dict[str, float] = collections.defaultdict(float)
    for event in json.loads(trace.read_text()):
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        if op == "Conv":  # fused nodes keep the Conv's name as a prefix
            node = event["name"][: -len("_kernel_time")]
            op = next((k for n, k in kinds.items() if node.startswith(n)), "Conv")
        per_op[op] += event["dur"] / runs / 1000.0
    trace.unlink(missing_ok=True)
    return dict(per_op)


def one_model(name: str, setting: str, args: argparse.Namespace) -> list[str]:
    import torch

    import graphprune
    from graphprune.cli.commands import deployed

    torch.set_num_threads(args.threads)
    model, inputs = build(name, args.yolo_size)
    result = graphprune.prune(model, inputs, **cli_options(name, SETTINGS[setting]))
    flops = count_flops(result.compact, inputs) / count_flops(model, inputs)
    with tempfile.TemporaryDirectory(prefix="graphprune-op-profile-") as tmp:
        options = deployed(result)
        dense = graphprune.export_onnx(result.state.graph, inputs, Path(tmp) / "dense.onnx", **options).path
        pruned = graphprune.export_onnx(result.compact, inputs, Path(tmp) / "pruned.onnx", **options).path
        d = profile(Path(dense), inputs, args.threads, args.runs)
        p = profile(Path(pruned), inputs, args.threads, args.runs)
    total_d, total_p = sum(d.values()), sum(p.values())
    lines = [f"{name}, {setting}: FLOPs ratio {flops:.3f} (ideal speed-up {1 / flops:.2f}x); kernel time per run "
             f"{total_d:.2f} -> {total_p:.2f} ms ({total_d / total_p:.2f}x, {total_d / total_p * flops:.2f} of ideal); "
             f"exact: {result.report.exact}", "",
             "| op type | dense ms | pruned ms | speed-up | share of pruned time |", "|---|---|---|---|---|"]
    for op in sorted(set(d) | set(p), key=lambda k: -p.get(k, 0.0)):
        a, b = d.get(op, 0.0), p.get(op, 0.0)
        speed = f"{a / b:.2f}x" if b > 0 else "-"
        lines.append(f"| {op} | {a:.3f} | {b:.3f} | {speed} | {b / total_p:.0%} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["efficientnet_b0"])
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="target_flops 0.5")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op (and torch) threads")
    parser.add_argument("--runs", type=int, default=30, help="profiled runs per file")
    parser.add_argument("--yolo-size", type=int, default=640)
    args = parser.parse_args()
    for name in args.models:
        print("\n".join(one_model(name, args.setting, args)) + "\n", flush=True)


if __name__ == "__main__":
    main()
