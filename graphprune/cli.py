"""The ``graphprune`` command line: a thin layer over the API.

    graphprune prune resnet18 --ratio 0.5 -o resnet18_pruned.onnx --save resnet18_pruned
    graphprune inspect resnet50
    graphprune bench mobilenet_v3_large --ratio 0.3
    graphprune bench model.onnx --input-shape 1,3,224,224

Errors are one line on stderr and a non-zero exit status (``--debug`` shows
the traceback). Files are written only when everything succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .config import COUPLINGS, MODES, PruneConfig
from .criteria import CRITERIA
from .errors import GraphpruneError

EXAMPLES = """examples:
  graphprune prune resnet18 --ratio 0.5 -o resnet18_pruned.onnx
  graphprune prune resnet50 --target-flops 0.5 --round-to 8
  graphprune prune mobilenet_v3_large --target-latency 0.6
  graphprune prune mypkg.models:build_net --weights net.pt --input-shape 1,3,128,128 --save out/
  graphprune prune yolov8n.yaml --input-shape 1,3,640,640 -o yolov8n_pruned.onnx
  graphprune inspect resnet50 --input-shape 1,3,64,64
  graphprune bench mobilenet_v3_large --ratio 0.3
  graphprune bench resnet18_pruned.onnx --input-shape 1,3,224,224

MODEL is a torchvision model name (random weights: nothing is downloaded), an
ultralytics config such as yolov8n.yaml (random weights) or checkpoint (.pt,
with --trust-checkpoint), or package.module:factory, a function that returns
your nn.Module.
"""


class UsageError(GraphpruneError):
    """A command-line argument is wrong."""


# -- arguments ----------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"--input-shape must be comma-separated positive integers such as 1,3,224,224; got {text!r}")
    return shape


def build_ultralytics(spec: str, trust_checkpoint: bool) -> nn.Module:
    """An ultralytics model from a yaml config (random weights) or a ``.pt`` checkpoint."""
    if spec.endswith(".pt") and not trust_checkpoint:
        raise UsageError(
            f"{spec} is a pickled checkpoint: loading it runs code stored in the file. "
            "Pass --trust-checkpoint if you trust where it came from"
        )
    if spec.endswith(".pt") and not os.path.isfile(spec):
        raise UsageError(f"checkpoint {spec!r} does not exist")
    os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach for the network
    try:
        from ultralytics import YOLO
    except ImportError:
        raise UsageError(f"{spec} needs ultralytics: pip install 'graphprune[yolo]'") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return YOLO(spec).model.float().eval()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"ultralytics cannot build {spec!r}: {first[:200]}") from None


def build_model(spec: str, trust_checkpoint: bool = False) -> nn.Module:
    """A torchvision model name, an ultralytics ``yolov8n.yaml`` / ``.pt``, or
    ``package.module:factory``."""
    if spec.endswith((".yaml", ".yml", ".pt")):
        return build_ultralytics(spec, trust_checkpoint)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UsageError(f"cannot import {module_name!r} for MODEL {spec!r}: {exc}") from None
        factory = getattr(module, attr, None)
        if factory is None:
            raise UsageError(f"{module_name!r} has no attribute {attr!r} (MODEL {spec!r})")
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
        if not isinstance(model, nn.Module):
            raise UsageError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
        return model.eval()
    import torchvision

    names = torchvision.models.list_models()
    if spec not in names:
        close = difflib.get_close_matches(spec, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; use a torchvision model name or package.module:factory"
        raise UsageError(f"unknown model {spec!r}{hint}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchvision.models.get_model(spec, weights=None).eval()


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict safely (``weights_only=True``); any mismatch is an error."""
    if not os.path.isfile(path):
        raise UsageError(f"weights file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"cannot read weights {path!r} as a plain state dict ({first[:200]}); it may be truncated, "
            "or a pickled checkpoint, which graphprune does not unpickle"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UsageError(f"{path!r} holds a {type(state).__name__}, not a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise UsageError(f"weights {path!r} do not fit {type(model).__name__}: keys " + ", ".join(parts))
    model.load_state_dict(state, strict=True)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="torchvision model name, yolov8n.yaml / model.pt, or package.module:factory")
    p.add_argument("--weights", metavar="FILE", help="state dict to load (read with weights_only=True)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow MODEL to be a pickled ultralytics .pt (unpickling runs code from the file)")
    p.add_argument("--input-shape", default="1,3,224,224", metavar="N,C,H,W", help="example input shape (default 1,3,224,224)")


def add_prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ratio", type=float, default=None, help="fraction of channels to drop, in [0, 1) (default 0.5)")
    p.add_argument("--target-flops", type=float, default=None, metavar="F",
                   help="prune to this fraction of the dense FLOPs, in (0, 1] (implies --mode global)")
    p.add_argument("--target-latency", type=float, default=None, metavar="F",
                   help="prune to this fraction of the dense ONNX Runtime latency, measured (implies --mode global)")
    p.add_argument("--criterion", default="l1", choices=sorted(CRITERIA), help="default l1")
    p.add_argument("--mode", default=None, choices=MODES, help="default per_layer (global with a target)")
    p.add_argument("--coupling", default="union", choices=COUPLINGS, help="default union")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME", help="modules (or glob patterns) to keep as they are")
    p.add_argument("--round-to", type=int, default=1, metavar="N", help="kept channels per group a multiple of N")
    p.add_argument("--min-channels", type=int, default=1, metavar="N")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graphprune",
        description="Channel-pruning compiler for PyTorch CNNs: a physically smaller model, verified lossless.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"graphprune {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("prune", parents=[common], help="prune a model and write ONNX / a saved model / a report",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    add_prune_arguments(p)
    p.add_argument("-o", "--output", metavar="OUT.onnx", help="write the compact model as ONNX (checked on ONNX Runtime)")
    p.add_argument("--save", metavar="DIR", help="save the compact model (plan.json + weights) to DIR")
    p.add_argument("--report", metavar="FILE.json", help="write the report as JSON")
    p.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")

    p = sub.add_parser("inspect", parents=[common], help="print the coupled channel groups and what is pinned, and why")
    add_model_arguments(p)
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME")
    p.add_argument("--all", action="store_true", help="list every group (default: the first 40)")

    p = sub.add_parser("bench", parents=[common], help="params, FLOPs and ONNX Runtime latency, dense vs pruned")
    p.add_argument("model", metavar="MODEL|FILE.onnx")
    p.add_argument("--weights", metavar="FILE")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--input-shape", default="1,3,224,224", metavar="N,C,H,W")
    add_prune_arguments(p)
    p.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    return parser


# -- output -------------------------------------------------------------------


def console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def progress(enabled: bool) -> Iterator[Any]:
    """A status line naming the running pass (stderr; silent when disabled)."""
    if not enabled:
        yield lambda name: None
        return
    with console().status("starting") as status:
        yield lambda name: status.update(f"[bold]{name}[/bold] ...")


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for h in headers:
        table.add_column(h, justify="left" if h == headers[0] else "right")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console().print(table)


def human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "n/a"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def change(before: float | None, after: float | None) -> str:
    if not before or after is None:
        return ""
    return f"{after / before:.1%}"


# -- commands -----------------------------------------------------------------


def _model_and_inputs(args: argparse.Namespace) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    shape = parse_shape(args.input_shape)
    model = build_model(args.model, args.trust_checkpoint)
    if args.weights:
        load_weights(model, args.weights)
    return model, (torch.randn(shape, generator=torch.Generator().manual_seed(0)),)


def _targets(args: argparse.Namespace) -> dict[str, float]:
    return {name: getattr(args, name) for name in ("target_flops", "target_latency") if getattr(args, name) is not None}


def _config(args: argparse.Namespace) -> dict:
    targets = _targets(args)
    if targets:
        flag = "--" + next(iter(targets)).replace("_", "-")
        if args.mode not in (None, "global"):
            raise UsageError(f"{flag} ranks channels across the whole model, so it implies --mode global; "
                             f"drop --mode {args.mode}")
        if args.ratio is not None:
            raise UsageError(f"give --ratio or {flag}, not both: the target decides how much is pruned")
    options = dict(
        ratio=0.5 if args.ratio is None else args.ratio, criterion=args.criterion,
        mode=args.mode or ("global" if targets else "per_layer"), coupling=args.coupling,
        ignore=tuple(args.ignore), round_to=args.round_to, min_channels=args.min_channels, seed=args.seed,
        **targets,
    )
    PruneConfig(**options)  # validate before any work
    return options


class Outputs:
    """Files a command writes: staged in a temporary folder, moved into place
    only when the whole command succeeded."""

    def __init__(self) -> None:
        self.staging = Path(tempfile.mkdtemp(prefix="graphprune-"))
        self.moves: list[tuple[Path, Path]] = []

    def stage(self, final: str) -> Path:
        tmp = self.staging / f"{len(self.moves)}-{Path(final).name}"
        self.moves.append((tmp, Path(final)))
        return tmp

    def commit(self) -> None:
        for tmp, final in self.moves:
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.is_dir():
                shutil.rmtree(final)
            shutil.move(str(tmp), str(final))

    def close(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)


def _latency_rows(result, workdir: Path, runs: int = 20, threads: int | None = None) -> dict:
    from .export import export_onnx
    from .latency import measure_latency

    x = result.state.example_inputs
    dense = export_onnx(result.state.graph, x, workdir / "dense.onnx")
    compact = export_onnx(result.compact, x, workdir / "compact.onnx")
    t_dense = measure_latency(dense.path, x, runs=runs, threads=threads)
    t_compact = measure_latency(compact.path, x, runs=runs, threads=threads)
    return {
        "dense_ms": t_dense.median_ms,
        "compact_ms": t_compact.median_ms,
        "speedup": t_dense.median_ms / t_compact.median_ms,
        "threads": t_compact.threads,
        "runs": runs,
        "onnx_bytes_dense": dense.size_bytes,
        "onnx_bytes_compact": compact.size_bytes,
    }


def report_document(result, latency: dict | None, onnx: Any = None, onnx_path: str | None = None) -> dict:
    r = result.report
    return {
        "graphprune": __version__,
        "frontend": r.frontend,
        "params": {"before": r.params_before, "after": r.params_after},
        "flops": {"before": r.flops_before, "after": r.flops_after},
        "verify": {"exact": r.exact, "max_abs_error": r.max_abs_error, "max_rel_error": r.max_rel_error},
        "latency": latency,
        "onnx": None if onnx is None else {
            "path": onnx_path,
            "exporter": onnx.exporter, "opset": onnx.opset, "max_abs_error": onnx.max_abs_error,
        },
        "channels": {"before": result.plan.channels_before, "after": result.plan.channels_after},
        "budget": r.budget or None,
        "timings_s": r.timings,
        "notes": r.notes,
    }


def setting(options: dict) -> str:
    """How much was asked for, in words: the ratio, or the target."""
    if options.get("target_flops") is not None:
        return f"target FLOPs {options['target_flops']:g}"
    if options.get("target_latency") is not None:
        return f"target latency {options['target_latency']:g}"
    return f"ratio {options['ratio']:g}"


def budget_rows(report) -> list[list[str]]:
    """Target vs achieved, for a compile with target_flops or target_latency."""
    b = report.budget
    rows = []
    if "target_flops" in b:
        rows.append(["FLOPs target", "", f"{b['target_flops']:.1%}", f"achieved {b['flops_fraction']:.1%}"])
    if "target_latency" in b:
        rows.append(["latency target (search, ms)", f"{b['latency_dense_ms']:.2f}", f"{b['latency_compact_ms']:.2f}",
                     f"achieved {b['latency_fraction']:.1%} vs target {b['target_latency']:.1%}"])
    return rows


def cmd_prune(args: argparse.Namespace) -> int:
    options = _config(args)
    model, inputs = _model_and_inputs(args)
    from .api import prune

    outputs = Outputs()
    try:
        with progress(not args.json) as step:
            result = prune(model, inputs, progress=step, **options)
            onnx = None
            if args.output:
                from .export import export_onnx

                step("export")
                onnx = export_onnx(result.compact, inputs, outputs.stage(args.output))
            latency = None
            if not args.no_latency:
                step("latency")
                latency = _latency_rows(result, outputs.staging)
        if args.save:
            from .serialize import save

            save(result, outputs.stage(args.save))
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
    print_table(f"graphprune {args.model}: {setting(options)}, {args.criterion}, {options['mode']}",
                ["", "dense", "pruned", "change"], rows)
    for path in (args.output, args.save, args.report):
        if path:
            print(f"wrote {path}")
    for note in r.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .config import PruneConfig
    from .passes import ChannelAnalysisPass, GroupPass, ShapePass, TracePass
    from .pipeline import CompileState, Pipeline

    model, inputs = _model_and_inputs(args)
    state = CompileState(model=model, example_inputs=inputs, config=PruneConfig(ignore=tuple(args.ignore)))
    with progress(not args.json) as step:
        Pipeline([TracePass(), ShapePass(), ChannelAnalysisPass(), GroupPass()]).run(state, step)
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


def cmd_bench(args: argparse.Namespace) -> int:
    from .latency import measure_latency

    shape = parse_shape(args.input_shape)
    if args.model.endswith(".onnx"):
        if not os.path.isfile(args.model):
            raise UsageError(f"ONNX file {args.model!r} does not exist")
        x = (torch.randn(shape),)
        t = measure_latency(args.model, x, runs=args.runs, threads=args.threads)
        doc = {"file": args.model, "latency_ms": t.median_ms, "threads": t.threads, "runs": t.runs}
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print_table(f"{args.model} on ONNX Runtime", ["", "value"],
                        [["median latency (ms)", f"{t.median_ms:.2f}"], ["threads", t.threads], ["runs", t.runs]])
        return 0
    options = _config(args)
    model, inputs = _model_and_inputs(args)
    from .api import prune

    with progress(not args.json) as step, tempfile.TemporaryDirectory() as tmp:
        result = prune(model, inputs, progress=step, **options)
        step("latency")
        latency = _latency_rows(result, Path(tmp), runs=args.runs, threads=args.threads)
    r = result.report
    doc = report_document(result, latency)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    flops_ratio = r.flops_before / r.flops_after
    print_table(
        f"{args.model} at {setting(options)} ({args.criterion}, {options['mode']}), ONNX Runtime, "
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
    return 0


COMMANDS = {"prune": cmd_prune, "inspect": cmd_inspect, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GraphpruneError as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())
        print(f"graphprune: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        message = " ".join(str(exc).split())[:300]
        print(f"graphprune: internal error: {type(exc).__name__}: {message} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
