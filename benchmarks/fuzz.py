"""Fuzz graphprune with random small CNNs (the generator of tests/fuzz_models.py).

Each case is a random program (convs with every padding mode, grouped and
depthwise convs, BN, many activations, residual adds, concatenations, splits,
SE gates, channel shuffles, transposed convs, pooling, flatten -> linear,
LayerNorm/GroupNorm, custom ops without a rule, several inputs and outputs)
and random settings (ratio, criterion, mode, round_to, min_channels, ignore).
``graphprune.prune`` must return a compact model equal to the masked one on a
fresh input or raise a documented ``GraphpruneError``; anything else is a
failure, printed with its seed and program (``--show SEED`` reprints one).

    python benchmarks/fuzz.py                       # 2000 cases from seed 0
    python benchmarks/fuzz.py --count 5000 --seed 100000 --jobs 2
    python benchmarks/fuzz.py --show 1719           # the program and settings of one seed
    python benchmarks/fuzz.py --frontend export --count 300   # the torch.export frontend (slower)

Not part of the test suite (tests/test_fuzz.py runs a few hundred cases).
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import re
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def run_seed(args: tuple[int, int, str]) -> tuple[int, str, str, bool, float, float]:
    seed, max_ops, frontend = args
    import torch
    from fuzz_models import random_case, run_case

    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        outcome = run_case(random_case(seed, max_ops, frontend))
    return seed, outcome.kind, outcome.detail, outcome.smaller, outcome.rel_error, time.perf_counter() - start


def reason_of(detail: str) -> str:
    """A refusal message with names and numbers blanked, so alike ones group."""
    text = re.sub(r"'[^']*'", "'…'", detail)
    text = re.sub(r"\(\(.*?\)\)|\d+(\.\d+)?", "N", text)
    return text[:110]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000, help="cases to run (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; case i uses seed + i (default 0)")
    parser.add_argument("--max-ops", type=int, default=10, help="op kinds per program (default 10)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--frontend", default="auto", choices=["auto", "fx", "export"],
                        help="graphprune frontend (default auto: torch.fx for these models)")
    parser.add_argument("--show", type=int, default=None, help="print the case of one seed and run it")
    args = parser.parse_args(argv)

    if args.show is not None:
        from fuzz_models import random_case

        print(repr(random_case(args.show, args.max_ops, args.frontend)))
        seed, kind, detail, smaller, rel, seconds = run_seed((args.show, args.max_ops, args.frontend))
        print(f"{kind}: {detail or f'max rel error {rel:.3g}'} ({seconds:.2f} s)")
        return 0 if kind != "failure" else 1

    work = [(args.seed + i, args.max_ops, args.frontend) for i in range(args.count)]
    start = time.perf_counter()
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            results = list(pool.imap_unordered(run_seed, work, chunksize=8))
    else:
        results = [run_seed(w) for w in work]
    wall = time.perf_counter() - start
    results.sort()

    kinds = collections.Counter(r[1] for r in results)
    refused = collections.Counter(reason_of(r[2]) for r in results if r[1] == "refused")
    failures = [r for r in results if r[1] == "failure"]
    smaller = sum(1 for r in results if r[1] == "exact" and r[3])
    worst = max((r[4] for r in results if r[1] == "exact"), default=0.0)
    slowest = max(results, key=lambda r: r[5])

    print(f"graphprune fuzz: seeds {args.seed}..{args.seed + args.count - 1}, max ops {args.max_ops}, "
          f"frontend {args.frontend}, "
          f"{wall:.0f} s wall ({wall / max(1, len(results)) * 1000:.0f} ms/case, slowest seed "
          f"{slowest[0]}: {slowest[5]:.1f} s)\n")
    rows = [
        ("cases", len(results)),
        ("exact", kinds["exact"]),
        ("  of which smaller", smaller),
        ("  of which not smaller (all pinned, ratio 0, ...)", kinds["exact"] - smaller),
        ("  worst max rel error", f"{worst:.2g}"),
        ("refused", kinds["refused"]),
        ("failures", kinds["failure"]),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"| {'outcome':<{width}} | {'count':>7} |\n|{'-' * (width + 2)}|{'-' * 9}|")
    for name, count in rows:
        print(f"| {name:<{width}} | {count!s:>7} |")
    if refused:
        print("\nrefused, by reason:")
        for reason, count in refused.most_common():
            print(f"  {count:>6}  {reason}")
    if failures:
        from fuzz_models import random_case

        print("\nfailures (rerun one with --show SEED):")
        for seed, _, detail, *_ in failures:
            print(f"\n- seed {seed}: {detail}\n{random_case(seed, args.max_ops, args.frontend)!r}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
