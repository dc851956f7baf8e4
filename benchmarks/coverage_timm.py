"""Coverage sweep over timm: one model per convolutional family, pruned at
ratio 0.5 (group mode, L2), random weights, compared with torchvision.

What: the families are timm's model modules (``timm.list_modules()``, the
``timm.models.<module>`` that registers each model; ``timm.list_models(module=)``
lists a family's models). Attention-first families (EXCLUDED below, each with
its reason) are left out: pruning them is another issue. For every other
family the model with the fewest parameters is taken, counted by building
each of the family's models on the meta device (no memory, no weights);
timm's ``test_*`` models (unit-test fixtures a few hundred thousand parameters
big, whose logits outweigh their features) are skipped unless
``--with-test-models``. Each model is pruned at a 64x64 input where it runs
(else its pretrained config's minimum or default size, noted in the table).

Recorded per model: outcome (exact / refused: the error's first line /
WRONG: the compact model disagrees / failed(bug): any other exception /
timeout / model error: timm's model does not run at all, not graphprune's
fault), prunable fraction (produced channels not pinned), params and FLOPs
before and after, max relative error, compile seconds (every pass but mask,
verify and measure), the whole prune() call in seconds, and the top pin
reason (the reason pinning the most produced channels, node names and module
paths replaced by module classes; 'reaches the model output', the logits
every classifier pins, only where nothing else is pinned).

    python benchmarks/coverage_timm.py                    # every CNN family
    python benchmarks/coverage_timm.py --torchvision      # and torchvision's CNNs, to compare
    python benchmarks/coverage_timm.py --limit 10 --json out.json
    python benchmarks/coverage_timm.py --only resnet18 mobilenetv3_small_050
    python benchmarks/coverage_timm.py --list             # the selection only

Every model runs in its own subprocess with a time limit (--timeout), so one
that hangs or runs out of memory is recorded, not fatal. Not part of the
test suite; needs timm (pip install 'graphprune[timm]').
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from collections import Counter

_VIT = "ViT-style patch transformer"
_WINDOW = "hierarchical / window attention transformer"
_MIXER = "token mixing by MLP, LSTM or state space, not convolution"
_HYBRID = "conv-attention hybrid whose stages are built around attention"
# timm module -> why it is not a CNN family. Conv-first families with a few
# attention blocks late in the network (cpubone, mobilenetv5) stay in.
EXCLUDED = {
    **dict.fromkeys(["vision_transformer", "vision_transformer_hybrid", "vision_transformer_relpos",
                     "vision_transformer_sam", "deit", "beit", "eva", "cait", "xcit", "tnt", "pit", "crossvit",
                     "convit", "volo", "naflexvit", "vitamin", "deepseek_vit", "gemma4_vit", "qwen3_vit"], _VIT),
    **dict.fromkeys(["swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr", "maxxvit", "hiera",
                     "hieradet_sam2", "mvitv2", "nest", "twins", "pvt_v2", "davit", "gcvit", "coat", "tiny_vit"],
                    _WINDOW),
    **dict.fromkeys(["mlp_mixer", "sequencer", "efficientvim"], _MIXER),
    **dict.fromkeys(["levit", "efficientformer", "efficientformer_v2", "efficientvit_mit", "efficientvit_msra",
                     "edgenext", "mobilevit", "nextvit", "visformer", "iformer", "shvit", "swiftformer",
                     "lowformer", "csatv2", "byoanet"], _HYBRID),
}
# torchvision classification models that are not CNNs.
TV_NOT_CNN = ("vit_", "swin_", "maxvit_")
NOT_COMPILE = ("mask", "verify", "measure")
OUTPUT_PIN = "reaches the model output"


def smallest(names: list[str]) -> tuple[str, int] | None:
    """The model among names with the fewest parameters, built on the meta device."""
    import timm
    import torch

    best = None
    for name in names:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
        except Exception:  # a model that will not build is not a candidate
            continue
        n = sum(p.numel() for p in model.parameters())
        if best is None or n < best[1]:
            best = (name, n)
    return best


def select_timm(with_test: bool, limit: int | None) -> list[tuple[str, str]]:
    """(family, model) per convolutional timm family, alphabetical by family."""
    import warnings

    import timm

    chosen = []
    families = [m for m in timm.list_modules() if m not in EXCLUDED]
    for family in families[:limit]:
        names = [n for n in timm.list_models(module=family) if with_test or not n.startswith("test_")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            best = smallest(names)
        if best is not None:
            chosen.append((family, best[0]))
    return chosen


def select_torchvision() -> list[tuple[str, str]]:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [("torchvision", n) for n in names if not n.startswith(TV_NOT_CNN)]


def build(source: str, name: str):
    """The model (eval mode, random weights) and its pretrained config (None for torchvision)."""
    if source == "torchvision":
        import torchvision

        return torchvision.models.get_model(name, weights=None).eval(), None
    import timm

    model = timm.create_model(name, pretrained=False).eval()
    return model, getattr(model, "pretrained_cfg", None) or {}


def choose_input(model, cfg: dict | None, size: int):
    """The first input the model runs on: size x size, else the config's sizes; and a note."""
    import torch

    default = tuple(cfg.get("input_size", (3, 224, 224))) if cfg is not None else (3, 224, 224)
    chans = default[0]
    if cfg is not None and cfg.get("fixed_input_size"):
        return torch.randn(1, *default), f"{default[1]}x{default[2]} (fixed)"
    minimum = tuple(cfg["min_input_size"][1:]) if cfg is not None and cfg.get("min_input_size") else None
    candidates = [(size, size), minimum, (96, 96), (128, 128), default[1:], (224, 224)]
    last = None
    for hw in dict.fromkeys(c for c in candidates if c):
        x = torch.randn(1, chans, *hw)
        try:
            with torch.no_grad():
                model(x)
        except Exception as exc:
            last = exc
            continue
        note = f"{hw[0]}x{hw[1]}" + ("" if hw == (size, size) else f" ({size} fails)")
        return x, note
    raise RuntimeError(f"runs at no input size tried: {type(last).__name__}: {first(last)}")


def first(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def pin_reasons(pinned: dict[str, int], model) -> dict[str, int]:
    """Pinned channels per reason, node names dropped and module paths named by class."""

    def module_class(m: re.Match) -> str:
        try:
            return f"module {type(model.get_submodule(m.group(1))).__name__}"
        except AttributeError:
            return "module"

    out: Counter = Counter()
    for reason, n in pinned.items():
        reason = re.sub(r" ?\(node [^)]*\)", "", reason)
        out[re.sub(r"module '([^']*)'", module_class, reason)] += n
    return dict(out)


def run_one(source: str, name: str, size: int, ratio: float, heads: str = "dims") -> dict:
    """Prune one model; runs inside a child process."""
    import warnings

    import graphprune
    from graphprune.errors import GraphpruneError, VerificationError

    warnings.simplefilter("ignore")
    row: dict = {"model": name, "source": source}
    try:
        model, cfg = build(source, name)
        x, row["input"] = choose_input(model, cfg, size)
    except Exception as exc:
        row.update(outcome="model error", reason=f"{type(exc).__name__}: {first(exc)}")
        return row
    start = time.perf_counter()
    try:
        result = graphprune.prune(model, x, ratio=ratio, criterion="l2", mode="group", heads=heads)
    except VerificationError as exc:
        row.update(outcome="WRONG", reason=first(exc))
        return row
    except GraphpruneError as exc:
        row.update(outcome="refused", reason=f"{type(exc).__name__}: {first(exc)}")
        return row
    except Exception as exc:  # a crash is a bug to fix, recorded as such
        row.update(outcome="failed(bug)", reason=f"{type(exc).__name__}: {first(exc)}")
        return row
    r = result.report
    pins = pin_reasons(r.pinned, model)
    inner = {k: v for k, v in pins.items() if k != OUTPUT_PIN}
    row.update(
        outcome="exact" if r.exact else "WRONG",
        reason="nothing pruned" if r.params_after == r.params_before else "",
        prunable=r.prunable_fraction,
        params_before=r.params_before,
        params_after=r.params_after,
        flops_before=r.flops_before,
        flops_after=r.flops_after,
        max_rel_error=r.max_rel_error,
        compile_s=sum(v for k, v in r.timings.items() if k not in NOT_COMPILE),
        prune_s=time.perf_counter() - start,
        top_pin=max(inner or pins, key=(inner or pins).get) if pins else "",
        pinned=pins,
    )
    return row


def run_child(source: str, name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", source, name, "--size", str(args.size), "--ratio", str(args.ratio),
           "--heads", args.heads]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model": name, "source": source, "outcome": "timeout", "reason": f"over {args.timeout}s"}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}, no output"])[-1]
    return {"model": name, "source": source, "outcome": "failed(bug)", "reason": f"child died: {tail[:200]}"}


def table(rows: list[dict]) -> str:
    out = [
        "| model | family | input | outcome | prunable | params M (before → after) | GFLOPs (before → after) "
        "| max rel err | compile s | prune s | top pin reason |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| {r['model']} | {r.get('family', r['source'])} | {r.get('input', '')} | {r['outcome']}"
        if "params_before" not in r:
            out.append(f"{head}: {r.get('reason', '')} | | | | | | | |")
            continue
        note = f" ({r['reason']})" if r.get("reason") else ""
        out.append(
            f"{head}{note} | {r['prunable']:.0%} | {r['params_before'] / 1e6:.2f} → {r['params_after'] / 1e6:.2f} | "
            f"{r['flops_before'] / 1e9:.3f} → {r['flops_after'] / 1e9:.3f} | {r['max_rel_error']:.1e} | "
            f"{r['compile_s']:.2f} | {r['prune_s']:.2f} | {r['top_pin'][:90]} |"
        )
    return "\n".join(out)


def median_prunable(rows: list[dict]) -> tuple[float | None, int]:
    values = [r["prunable"] for r in rows if r.get("prunable") is not None]
    return (statistics.median(values) if values else None), len(values)


def summary(timm_rows: list[dict], tv_rows: list[dict]) -> str:
    counts = Counter(r["outcome"] for r in timm_rows)
    lines = ["Summary (timm): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
             + f" (of {len(timm_rows)} models)"]
    bad = [r["model"] for r in timm_rows if r["outcome"] not in ("exact", "refused", "model error")]
    lines.append("Not exact and not cleanly refused: " + (", ".join(bad) or "none"))
    broken = [r["model"] for r in timm_rows if r["outcome"] == "model error"]
    lines.append("timm model does not run (not graphprune's): " + (", ".join(broken) or "none"))
    nothing = [r["model"] for r in timm_rows if r.get("reason") == "nothing pruned"]
    lines.append("Exact but nothing pruned: " + (", ".join(nothing) or "none"))
    med, n = median_prunable(timm_rows)
    lines.append(f"Median prunable fraction, timm CNNs: {med:.1%} (over {n} compiled)" if med is not None
                 else "Median prunable fraction, timm CNNs: n/a")
    if tv_rows:
        tv_counts = Counter(r["outcome"] for r in tv_rows)
        lines.append("Summary (torchvision): " + ", ".join(f"{k} {v}" for k, v in sorted(tv_counts.items()))
                     + f" (of {len(tv_rows)} classification CNNs)")
        tv_med, tv_n = median_prunable(tv_rows)
        if tv_med is not None and med is not None:
            gap = (med - tv_med) * 100
            lines.append(f"Median prunable fraction, torchvision CNNs: {tv_med:.1%} (over {tv_n}); "
                         f"timm - torchvision = {gap:+.1f} points ({'within' if abs(gap) <= 5 else 'outside'} 5)")
    models_per: Counter = Counter()
    channels_per: Counter = Counter()
    for r in timm_rows:
        for reason, n in r.get("pinned", {}).items():
            if reason != OUTPUT_PIN:
                models_per[reason] += 1
                channels_per[reason] += n
    lines.append(f"Commonest pin reasons (timm; '{OUTPUT_PIN}', the logits, left out):")
    lines += [f"  {k} models, {channels_per[reason]} channels: {reason}" for reason, k in models_per.most_common(5)]
    return "\n".join(lines)


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these timm models, no family selection")
    parser.add_argument("--limit", type=int, help="only the first N families (alphabetical)")
    parser.add_argument("--torchvision", action="store_true", help="also torchvision's classification CNNs")
    parser.add_argument("--with-test-models", action="store_true", help="let timm's test_* models be chosen")
    parser.add_argument("--size", type=int, default=64, help="input size where the model allows (default 64)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--heads", default="dims", choices=["dims", "whole"],
                        help="attention: prune head dims (default) or drop whole heads")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per model (default 120)")
    parser.add_argument("--json", help="write every row and the summary here")
    parser.add_argument("--list", action="store_true", help="print the selection and stop")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    return parser.parse_args()


def sweep(cases: list[tuple[str, str]], source: str, args: argparse.Namespace) -> list[dict]:
    rows = []
    for i, (family, name) in enumerate(cases, 1):
        row = run_child(source, name, args)
        row["family"] = family
        rows.append(row)
        print(f"[{source} {i}/{len(cases)}] {name}: {row['outcome']} {row.get('reason', '')}", file=sys.stderr,
              flush=True)
    return rows


def main() -> None:
    args = parse()
    if args.child:
        print(json.dumps(run_one(args.child[0], args.child[1], args.size, args.ratio, heads=args.heads)))
        return
    start = time.perf_counter()
    if args.only:
        import timm

        known = {n: m for m in timm.list_modules() for n in timm.list_models(module=m)}
        cases = [(known.get(n, "?"), n) for n in args.only]
    else:
        cases = select_timm(args.with_test_models, args.limit)
    print(f"{len(cases)} timm models chosen in {time.perf_counter() - start:.0f}s; excluded families: "
          + ", ".join(sorted(EXCLUDED)), file=sys.stderr, flush=True)
    if args.list:
        print("\n".join(f"{family}: {name}" for family, name in cases))
        return
    timm_rows = sweep(cases, "timm", args)
    tv_rows = sweep(select_torchvision(), "torchvision", args) if args.torchvision else []
    text = "\n\n".join(filter(None, [table(timm_rows), tv_rows and table(tv_rows), summary(timm_rows, tv_rows)]))
    text += f"\n\nWall time: {time.perf_counter() - start:.0f}s"
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"timm": timm_rows, "torchvision": tv_rows, "summary": summary(timm_rows, tv_rows),
                       "excluded": EXCLUDED}, f, indent=1)


if __name__ == "__main__":
    main()
