"""``python -m graphprune [MODEL]``: prune a torchvision model (random init, no
download) and print the plan summary and report."""

from __future__ import annotations

import argparse
import sys
import warnings

import torch

from . import prune
from .config import MODES
from .criteria import CRITERIA
from .errors import GraphpruneError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m graphprune",
        description="Prune a torchvision CNN (random weights) and check the compact model is lossless.",
        epilog="example: python -m graphprune resnet50 --ratio 0.5 --mode group",
    )
    parser.add_argument("model", nargs="?", default="resnet18", help="torchvision model name (default resnet18)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--criterion", default="l1", choices=sorted(CRITERIA))
    parser.add_argument("--mode", default="per_layer", choices=MODES)
    parser.add_argument("--coupling", default="union", choices=["union", "intersection"])
    parser.add_argument("--input-size", type=int, default=224)
    args = parser.parse_args(argv)

    import torchvision

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torchvision.models.get_model(args.model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    x = torch.randn(1, 3, args.input_size, args.input_size)
    try:
        result = prune(model, x, ratio=args.ratio, criterion=args.criterion, mode=args.mode,
                       coupling=args.coupling, progress=lambda name: print(f"  {name} ...", file=sys.stderr))
    except GraphpruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.plan.table(limit=12))
    print(f"... {len(result.plan.groups)} groups, channels {result.plan.channels_before} -> {result.plan.channels_after}")
    print(result.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
