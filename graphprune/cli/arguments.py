"""Command-line arguments: the parser, and options validated before any work."""

from __future__ import annotations

import argparse

from .. import __version__
from ..config import COUPLINGS, HEADS, MODES, PruneConfig
from ..criteria import CRITERIA
from ..deploy import resolve_round_to
from ..errors import GraphpruneError

EXAMPLES = """examples:
  graphprune prune resnet18 --ratio 0.5 -o resnet18_pruned.onnx
  graphprune prune resnet50 --target-flops 0.5 --round-to 8
  graphprune prune mobilenet_v3_large --target-latency 0.6
  graphprune prune mypkg.models:build_net --weights net.pt --input-shape 1,3,128,128 --save out/
  graphprune prune yolov8n.yaml --input-shape 1,3,640,640 -o yolov8n_pruned.onnx
  graphprune prune best.pt --trust-checkpoint --input-shape 1,3,640,640 -o pruned.pt --masked masked.pt
  graphprune finetune masked.pt --trust-checkpoint data=data.yaml epochs=10 imgsz=640
  graphprune prune timm:efficientnet_b0 --weights my_finetuned.pt
  graphprune inspect resnet50 --input-shape 1,3,64,64
  graphprune bench mobilenet_v3_large --ratio 0.3
  graphprune bench resnet18_pruned.onnx --input-shape 1,3,224,224

MODEL is a torchvision model name (random weights: nothing is downloaded),
timm:NAME for a timm model (random weights), an ultralytics config such as
yolov8n.yaml (random weights) or checkpoint (.pt, with --trust-checkpoint), or
package.module:factory, a function that returns your nn.Module.
"""


class UsageError(GraphpruneError):
    """A command-line argument is wrong."""


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"--input-shape must be comma-separated positive integers such as 1,3,224,224; got {text!r}")
    return shape


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="torchvision model name, yolov8n.yaml / model.pt, or package.module:factory")
    p.add_argument("--weights", metavar="FILE", help="state dict to load (read with weights_only=True)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow MODEL to be a pickled ultralytics .pt (unpickling runs code from the file)")
    p.add_argument("--input-shape", default=None, metavar="N,C,H,W",
                   help="example input shape (default: the model's own, batch 1: an ultralytics checkpoint's "
                        "training imgsz, 640 for an ultralytics config, timm's pretrained input_size, the "
                        "evaluation crop of a torchvision model's weights; 1,3,224,224 otherwise)")


def add_prune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ratio", type=float, default=None, help="fraction of channels to drop, in [0, 1) (default 0.5)")
    p.add_argument("--target-flops", type=float, default=None, metavar="F",
                   help="prune to this fraction of the dense FLOPs, in (0, 1] (implies --mode global)")
    p.add_argument("--target-latency", type=float, default=None, metavar="F",
                   help="prune to this fraction of the dense ONNX Runtime latency, measured (implies --mode global)")
    p.add_argument("--trade-flops", action="store_true",
                   help="with --target-flops or --target-latency: rank channels by score over the time a FLOP of "
                        "theirs costs on this runtime (memory-bound layers lose channels first), not by score alone")
    p.add_argument("--criterion", default="l1", choices=sorted(CRITERIA), help="default l1")
    p.add_argument("--mode", default=None, choices=MODES, help="default per_layer (global with a target)")
    p.add_argument("--coupling", default="union", choices=COUPLINGS, help="default union")
    p.add_argument("--heads", default="dims", choices=HEADS,
                   help="attention heads: dims (every head keeps the same head dims; default) or whole (drop heads)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME", help="modules (or glob patterns) to keep as they are")
    p.add_argument("--round-to", default=None, metavar="N|auto",
                   help="kept channels per group a multiple of N; auto: what ONNX Runtime runs fast on this CPU "
                        "(the default when writing ONNX, benchmarking or with --target-latency; else 1)")
    p.add_argument("--min-channels", type=int, default=1, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outputs", nargs="+", default=None, metavar="OUT",
                   help="the outputs the compact model must reproduce: indices, keys or dotted paths "
                        "(0, out, 1.feats.0) or 'all' (default: what the model's source deploys; "
                        "ultralytics: the predictions)")


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
    p.add_argument("-o", "--output", metavar="OUT.onnx|OUT.pt",
                   help="write the compact model as ONNX (checked on ONNX Runtime), or for an ultralytics model "
                        "as a checkpoint that ultralytics.YOLO(OUT.pt) loads")
    p.add_argument("--masked", metavar="OUT.pt",
                   help="ultralytics models: also write the masked model (dropped channels held at zero) as a "
                        "checkpoint, to fine-tune with `graphprune finetune` and reconstruct")
    p.add_argument("--save", metavar="DIR", help="save the compact model (plan.json + weights) to DIR")
    p.add_argument("--report", metavar="FILE.json", help="write the report as JSON")
    p.add_argument("--no-latency", action="store_true", help="skip the ONNX Runtime latency measurement")

    p = sub.add_parser("inspect", parents=[common], help="print the coupled channel groups and what is pinned, and why")
    add_model_arguments(p)
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME")
    p.add_argument("--all", action="store_true", help="list every group (default: the first 40)")

    p = sub.add_parser("finetune", parents=[common], help="fine-tune a pruned or masked ultralytics checkpoint "
                       "with ultralytics' own trainer (the model is kept, never rebuilt dense)")
    p.add_argument("model", metavar="MODEL.pt")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="required: the checkpoint is pickled, and unpickling runs code from the file")
    p.epilog = "Every other argument is one of ultralytics' train arguments: data=data.yaml epochs=10 imgsz=640 ..."

    p = sub.add_parser("bench", parents=[common], help="params, FLOPs and ONNX Runtime latency, dense vs pruned")
    p.add_argument("model", metavar="MODEL|FILE.onnx")
    p.add_argument("--weights", metavar="FILE")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--input-shape", default=None, metavar="N,C,H,W",
                   help="example input shape (default: the model's own, as for prune; a file's static input shape)")
    add_prune_arguments(p)
    p.add_argument("--runs", type=int, default=None,
                   help="timed runs of each model (default: adaptive, until both medians are stable)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    return parser


def round_to(args: argparse.Namespace) -> int | str:
    """``--round-to``: a number, or ``auto``, which is the default where the output is for ONNX Runtime."""
    value = args.round_to
    if value is None:
        onnx = args.command == "bench" or str(getattr(args, "output", "") or "").endswith(".onnx")
        return "auto" if onnx or args.target_latency is not None else 1
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--round-to takes a number or auto; got {value!r}") from None


def output_selector(items: list[str] | None) -> object:
    """``--outputs 0 out 1.feats.0`` as a contract selector (digits are indices)."""
    if not items:
        return None
    if items == ["all"]:
        return "all"

    def key(text: str) -> int | str:
        return int(text) if text.lstrip("-").isdigit() else text

    return [tuple(key(k) for k in item.split(".")) for item in items]


def _targets(args: argparse.Namespace) -> dict[str, float]:
    return {name: getattr(args, name) for name in ("target_flops", "target_latency") if getattr(args, name) is not None}


def prune_options(args: argparse.Namespace) -> dict:
    targets = _targets(args)
    if targets:
        flag = "--" + next(iter(targets)).replace("_", "-")
        if args.mode not in (None, "global"):
            raise UsageError(f"{flag} ranks channels across the whole model, so it implies --mode global; "
                             f"drop --mode {args.mode}")
        if args.ratio is not None:
            raise UsageError(f"give --ratio or {flag}, not both: the target decides how much is pruned")
    options = dict(
        outputs=output_selector(args.outputs),
        ratio=0.5 if args.ratio is None else args.ratio, criterion=args.criterion,
        mode=args.mode or ("global" if targets else "per_layer"), coupling=args.coupling,
        heads=args.heads, ignore=tuple(args.ignore), round_to=round_to(args), min_channels=args.min_channels, seed=args.seed,
        **targets,
    )
    if args.trade_flops:
        options["trade_flops"] = True
    PruneConfig(**{**options, "round_to": resolve_round_to(options["round_to"], True)[0]})  # validate before any work
    return options
