"""The ``graphprune`` command line: a thin layer over the API.

    graphprune prune resnet18 --ratio 0.5 -o resnet18_pruned.onnx --save resnet18_pruned
    graphprune inspect resnet50
    graphprune bench mobilenet_v3_large --ratio 0.3
    graphprune bench model.onnx --input-shape 1,3,224,224

Errors are one line on stderr and a non-zero exit status (``--debug`` shows
the traceback). Files are written only when everything succeeded.
"""

from __future__ import annotations

import sys

from ..errors import GraphpruneError
from .arguments import UsageError, build_parser
from .commands import cmd_bench, cmd_finetune, cmd_inspect, cmd_prune

__all__ = ["COMMANDS", "UsageError", "build_parser", "main"]

COMMANDS = {"prune": cmd_prune, "inspect": cmd_inspect, "bench": cmd_bench, "finetune": cmd_finetune}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "finetune":
        args.train_args = extra  # ultralytics' key=value arguments, wherever they stand
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
