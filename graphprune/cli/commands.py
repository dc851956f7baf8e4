"""The commands: prune, inspect, bench."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .arguments import UsageError, parse_shape, prune_options
from .models import model_and_inputs
from .output import (
    Outputs,
    budget_rows,
    change,
    human,
    print_table,
    progress,
    report_document,
    setting,
    warn_if_slower,
)

if TYPE_CHECKING:
    from ..api import PruneResult, Report
    from ..onnx_export import OnnxExport


def latency_rows(result: PruneResult, workdir: Path, runs: int | None = None, threads: int | None = None,
                 compact: OnnxExport | None = None) -> dict:
    """Dense vs compact on ONNX Runtime; ``compact``: the file already written, if any (not exported twice)."""
    from ..onnx_export import export_onnx
    from ..onnx_latency import compare_latency

    x = result.state.example_inputs
    options = deployed(result)  # both files with the same outputs
    dense = export_onnx(result.state.graph, x, workdir / "dense.onnx", **options)
    compact = compact or export_onnx(result.compact, x, workdir / "compact.onnx", **options)
    timed = compare_latency(dense.path, compact.path, x, runs=runs, threads=threads)
    return {
        "dense_ms": timed.dense.median_ms,
        "compact_ms": timed.compact.median_ms,
        "speedup": timed.speedup,
        "threads": timed.compact.threads,
        "runs": timed.compact.runs,
        "onnx_bytes_dense": dense.size_bytes,
        "onnx_bytes_compact": compact.size_bytes,
    }


def cmd_prune(args: argparse.Namespace) -> int:
    options = prune_options(args)
    model, inputs, input_note = model_and_inputs(args)
    from ..api import prune

    outputs = Outputs()
    try:
        with progress(not args.json) as step:
            result = prune(model, inputs, progress=step, **options)
            onnx = None
            if args.output and not args.output.endswith(".pt"):
                from ..onnx_export import export_onnx

                step("export")
                onnx = export_onnx(result.compact, inputs, outputs.stage(args.output), **deployed(result))
            latency = None
            if not args.no_latency:
                step("latency")
                latency = latency_rows(result, outputs.staging, compact=onnx)
        if args.save:
            from ..serialize import save

            save(result, outputs.stage(args.save))
        write_checkpoints(args, result, outputs)
        document = report_document(result, latency, onnx, args.output)
        if args.report:
            outputs.stage(args.report).write_text(json.dumps(document, indent=2))
        outputs.commit()
    finally:
        outputs.close()

    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    r = result.report
    rows = [
        ["parameters", human(r.params_before), human(r.params_after), change(r.params_before, r.params_after)],
        ["FLOPs", human(r.flops_before), human(r.flops_after), change(r.flops_before, r.flops_after)],
        ["channels", result.plan.channels_before, result.plan.channels_after,
         change(result.plan.channels_before, result.plan.channels_after)],
    ]
    if latency:
        rows.append(["ORT latency (ms)", f"{latency['dense_ms']:.2f}", f"{latency['compact_ms']:.2f}",
                     f"{latency['speedup']:.2f}x faster"])
    rows += budget_rows(r)
    rows.append(["max error vs masked", "", f"{r.max_abs_error:.2e}", "exact" if r.exact else "NOT EXACT"])
    print_table(f"graphprune {args.model} at {shape_text(inputs)}: {setting(options)}, {args.criterion}, "
                f"{options['mode']}",
                ["", "dense", "pruned", "change"], rows)
    for path in (args.output, args.masked, args.save, args.report):
        if path:
            print(f"wrote {path}")
    print_notes(r, onnx, latency, options, input_note, args.output)
    return 0


def shape_text(inputs: tuple) -> str:
    """``1x3x640x640``: the example input, as a table title names it."""
    return "x".join(map(str, inputs[0].shape)) if len(inputs) == 1 else f"{len(inputs)} inputs"


def print_notes(r: Report, onnx: OnnxExport | None, latency: dict | None, options: dict,
                input_note: str | None = None, onnx_path: str | None = None) -> None:
    """What the user should know about the result, on stderr."""
    if input_note:
        print(f"note: {input_note}", file=sys.stderr)
    if onnx is not None and onnx.rewrites:
        print(f"note: {onnx_path or onnx.path.name}: rewritten for ONNX Runtime ({'; '.join(onnx.rewrites)}), checked against "
              "PyTorch like the rest of the file", file=sys.stderr)
    for note in r.notes:
        print(f"note: {note}", file=sys.stderr)
    warn_if_slower(latency, options)
    for where, (before, after) in r.reduced_outputs.items():
        print(f"note: {where} is not in the output contract: {before} -> {after} channels", file=sys.stderr)
    print_rebuilt(r.replaced)
    print_heads(r.heads)


def print_heads(heads: dict[str, tuple[tuple[int, ...], int]]) -> None:
    """With whole heads: how many heads were dropped, in how many attention layers."""
    dropped = sum(len(d) for d, _ in heads.values())
    if heads:
        print(f"note: {dropped} of {sum(t for _, t in heads.values())} attention heads dropped in "
              f"{sum(1 for d, _ in heads.values() if d)} of {len(heads)} layers (--report lists which)",
              file=sys.stderr)


def print_rebuilt(replaced: dict[str, str], shown: int = 3) -> None:
    """One note per kind of rebuilt layer: how many, why, the first few paths."""
    by_why: dict[str, list[str]] = {}
    for path, why in replaced.items():
        by_why.setdefault(why, []).append(path)
    for why, paths in by_why.items():
        more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
        layers = "layer" if len(paths) == 1 else "layers"
        print(f"note: {len(paths)} {layers} rebuilt, {why}: {', '.join(paths[:shown])}{more} (--report lists all)",
              file=sys.stderr)


def deployed(result: PruneResult) -> dict:
    """What an ONNX file holds: the contract's outputs, under ultralytics' own
    names for an ultralytics model (``images`` -> ``output0``, ``output1``),
    so deployment code written for ``YOLO.export(format="onnx")`` runs unchanged."""
    from ..contract import is_ultralytics

    paths = result.state.contract.eval if result.state.contract is not None else None
    options: dict = {"outputs": paths}
    if is_ultralytics(result.compact) and paths is not None:
        options.update(input_names=("images",), output_names=tuple(f"output{i}" for i in range(len(paths))))
    return options


def write_checkpoints(args: argparse.Namespace, result: PruneResult, outputs: Outputs) -> None:
    """``-o pruned.pt`` / ``--masked masked.pt``: ultralytics checkpoints of the compact / masked model."""
    wanted = [(path, model, keep) for path, model, keep in
              ((args.output, result.compact, False), (args.masked, result.masked, True)) if path and path.endswith(".pt")]
    if args.masked and not args.masked.endswith(".pt"):
        raise UsageError(f"--masked writes an ultralytics checkpoint: give a .pt path, not {args.masked!r}")
    if not wanted:
        return
    if not type(result.compact).__module__.startswith("ultralytics"):
        raise UsageError("a .pt output is an ultralytics checkpoint, and this is not an ultralytics model; "
                         "write ONNX with -o OUT.onnx, or the compact model with --save DIR")
    from ..integrations.ultralytics import save_checkpoint

    for path, model, keep in wanted:
        save_checkpoint(model, outputs.stage(path), keep_masks=keep)


def cmd_finetune(args: argparse.Namespace) -> int:
    if not args.trust_checkpoint:
        raise UsageError(f"{args.model} is a pickled checkpoint: loading it runs code stored in the file. "
                         "Pass --trust-checkpoint if you trust where it came from")
    try:
        from ..integrations.ultralytics import main as finetune
    except ImportError:
        raise UsageError("finetune needs ultralytics: pip install 'graphprune[yolo]'") from None
    return finetune([args.model, *args.train_args])


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..config import PruneConfig
    from ..pipeline import CompileState, Pipeline

    model, inputs, input_note = model_and_inputs(args)
    if input_note and not args.json:
        print(f"note: {input_note}", file=sys.stderr)
    state = CompileState(model=model, example_inputs=inputs, config=PruneConfig(ignore=tuple(args.ignore)))
    with progress(not args.json) as step:
        Pipeline.default().until("groups").run(state, step)
    groups = state.groups
    docs = [
        {
            "group": g.name, "channels": g.size, "prunable": g.prunable, "pinned": g.size - g.prunable,
            "producers": g.producers, "members": g.members, "pinned_because": g.reasons,
        }
        for g in groups
    ]
    if args.json:
        print(json.dumps({"model": args.model, "groups": docs}, indent=2))
        return 0
    shown = docs if args.all else docs[:40]
    rows = [
        [d["group"], d["channels"], d["pinned"], len(d["members"]),
         ", ".join(d["producers"][:3]) + (f" +{len(d['producers']) - 3}" if len(d["producers"]) > 3 else ""),
         "; ".join(d["pinned_because"][:2])]
        for d in shown
    ]
    print_table(f"{args.model}: {len(groups)} groups of coupled channels", 
                ["group", "channels", "pinned", "members", "producers", "pinned because"], rows)
    if len(shown) < len(docs):
        print(f"... {len(docs) - len(shown)} more groups (--all lists them)")
    total = sum(d["channels"] for d in docs)
    free = sum(d["prunable"] for d in docs)
    print(f"{free} of {total} produced channels are prunable ({free / max(total, 1):.1%})")
    return 0


def file_input_shape(path: str) -> tuple[int, ...]:
    """An ONNX file's first input shape, batch 1 where the batch is symbolic."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UsageError(f"{path} takes {len(inputs)} inputs; give the shape of one with --input-shape")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    shape = tuple(1 if d is None and i == 0 else d for i, d in enumerate(dims))
    if not shape or any(d is None or d <= 0 for d in shape):
        raise UsageError(f"{path}'s input {inputs[0].name!r} has sizes the file does not fix "
                         f"({[d if d else '?' for d in dims]}): give them with --input-shape")
    return shape


def cmd_bench(args: argparse.Namespace) -> int:
    from ..onnx_latency import measure_latency

    if args.model.endswith(".onnx"):
        if not os.path.isfile(args.model):
            raise UsageError(f"ONNX file {args.model!r} does not exist")
        shape = parse_shape(args.input_shape) if args.input_shape else file_input_shape(args.model)
        x = (torch.randn(shape),)
        t = measure_latency(args.model, x, runs=args.runs or 20, threads=args.threads)
        doc = {"file": args.model, "latency_ms": t.median_ms, "threads": t.threads, "runs": t.runs}
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print_table(f"{args.model} on ONNX Runtime", ["", "value"],
                        [["median latency (ms)", f"{t.median_ms:.2f}"], ["threads", t.threads], ["runs", t.runs]])
        return 0
    options = prune_options(args)
    model, inputs, input_note = model_and_inputs(args)
    if input_note and not args.json:
        print(f"note: {input_note}", file=sys.stderr)
    from ..api import prune

    with progress(not args.json) as step, tempfile.TemporaryDirectory() as tmp:
        result = prune(model, inputs, progress=step, **options)
        step("latency")
        latency = latency_rows(result, Path(tmp), runs=args.runs, threads=args.threads)
    r = result.report
    doc = report_document(result, latency)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    flops_ratio = r.flops_before / r.flops_after
    print_table(
        f"{args.model} ({shape_text(inputs)}) at {setting(options)} ({args.criterion}, {options['mode']}), ONNX Runtime, "
        f"{latency['threads']} threads",
        ["", "dense", "pruned", "ratio"],
        [
            ["parameters", human(r.params_before), human(r.params_after), f"{r.params_before / r.params_after:.2f}x"],
            ["FLOPs", human(r.flops_before), human(r.flops_after), f"{flops_ratio:.2f}x"],
            ["latency (ms, median)", f"{latency['dense_ms']:.2f}", f"{latency['compact_ms']:.2f}",
             f"{latency['speedup']:.2f}x"],
            *budget_rows(r),
        ],
    )
    print(f"measured speed-up {latency['speedup']:.2f}x vs FLOPs reduction {flops_ratio:.2f}x")
    warn_if_slower(latency, options)
    return 0
