"""Coverage sweep: every torchvision classification model plus three
segmentation models, pruned at ratio 0.5 (L1, per_layer), random weights.

For each model: outcome (exact / refused with the reason / error), fraction
of produced channels that are prunable, params and FLOPs before and after,
max relative error compact vs masked, compile time (all passes but verify and
measure). Writes a markdown table to stdout (and to --out).

    python benchmarks/coverage.py                      # all 83 models
    python benchmarks/coverage.py --models resnet18,vit_b_16 --size 96
    python benchmarks/coverage.py --models convnext_tiny,swin_t --mode group --onnx

A classifier whose last linear layer starts at zero (torchvision's ViT) gets
small random weights there, so its outputs are not all zero and "exact"
compares something.

Every model runs in its own subprocess with a time limit, so one that hangs
or runs out of memory is recorded, not fatal. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SEGMENTATION = ["fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large"]
# Models whose architecture fixes the input size (positional embeddings, window grids).
FIXED_SIZE = {"vit_b_16": 224, "vit_b_32": 224, "vit_l_16": 224, "vit_l_32": 224, "vit_h_14": 224, "maxvit_t": 224}
MIN_SIZE = {"inception_v3": 96, "swin_v2_t": 128, "swin_v2_s": 128, "swin_v2_b": 128}


def run_one(name: str, size: int, ratio: float, mode: str = "per_layer", onnx: bool = False, heads: str = "dims") -> dict:
    """Prune one model; runs inside a child process."""
    import warnings

    import torch
    import torchvision

    import graphprune
    from graphprune.errors import GraphpruneError, VerificationError

    size = FIXED_SIZE.get(name, max(size, MIN_SIZE.get(name, 0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name in SEGMENTATION:
            aux = {} if name.startswith("lraspp") else {"aux_loss": True}
            model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21, **aux)
        else:
            model = torchvision.models.get_model(name)
    for layer in model.modules():  # ViT starts its head at zero: every output 0 would make "exact" vacuous
        if isinstance(layer, torch.nn.Linear) and not layer.weight.any():
            torch.nn.init.normal_(layer.weight, 0.0, 0.02)
    model.eval()
    x = torch.randn(1, 3, size, size)
    row = {"model": name, "size": size}
    start = time.perf_counter()
    try:
        result = graphprune.prune(model, x, ratio=ratio, criterion="l1", mode=mode, heads=heads)
    except VerificationError as exc:
        row.update(outcome="WRONG", reason=str(exc).splitlines()[0][:160])
        return row
    except GraphpruneError as exc:
        row.update(outcome="refused", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return row
    except Exception as exc:  # a crash is a bug to fix, recorded as such
        row.update(outcome="error", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")
        return row
    r = result.report
    unchanged = r.params_after == r.params_before
    row.update(
        outcome="exact" if r.exact else "WRONG",
        reason="nothing prunable: every channel pinned" if unchanged else "",
        prunable=r.prunable_fraction,
        params_before=r.params_before,
        params_after=r.params_after,
        flops_before=r.flops_before,
        flops_after=r.flops_after,
        max_rel_error=r.max_rel_error,
        compile_s=r.compile_seconds,
        wall_s=time.perf_counter() - start,
        top_pin_reasons=sorted({g.reasons[0].split(" (node")[0] for g in result.plan.groups if g.reasons})[:2],
    )
    if onnx:  # the compact model's ONNX file, checked on ONNX Runtime against PyTorch (raises above 1e-4)
        import tempfile

        from graphprune.onnx_export import export_onnx

        with tempfile.TemporaryDirectory() as folder:
            try:
                info = export_onnx(result.compact, x, f"{folder}/compact.onnx")
                row["onnx"] = f"{info.max_abs_error:.1e}"
            except Exception as exc:
                row["onnx"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    return row


def table(rows: list[dict]) -> str:
    out = [
        "| model | outcome | prunable | params M (before → after) | GFLOPs (before → after) | max rel err | compile s |"
        + (" ONNX Runtime max abs err |" if any("onnx" in r for r in rows) else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if any("onnx" in r for r in rows) else ""),
    ]
    for r in rows:
        if "params_before" in r:
            note = f" ({r['reason']})" if r.get("reason") else ""
            out.append(
                f"| {r['model']} | {r['outcome']}{note} | {r['prunable']:.0%} | "
                f"{r['params_before'] / 1e6:.2f} → {r['params_after'] / 1e6:.2f} | "
                f"{r['flops_before'] / 1e9:.3f} → {r['flops_after'] / 1e9:.3f} | "
                f"{r['max_rel_error']:.1e} | {r['compile_s']:.2f} |" + (f" {r['onnx']} |" if "onnx" in r else "")
            )
        else:
            out.append(f"| {r['model']} | {r['outcome']}: {r.get('reason', '')} | | | | | |")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    out.append("")
    out.append("Summary: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + f" (of {len(rows)})")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names (default: all)")
    parser.add_argument("--size", type=int, default=64, help="input size where the model allows (default 64)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--mode", default="per_layer", choices=["per_layer", "group"])
    parser.add_argument("--heads", default="dims", choices=["dims", "whole"],
                        help="attention: prune head dims (default) or drop whole heads")
    parser.add_argument("--onnx", action="store_true", help="also export each compact model, checked on ONNX Runtime")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per model")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(run_one(args.child, args.size, args.ratio, args.mode, args.onnx, args.heads)))
        return

    import torchvision

    names = args.models.split(",") if args.models else torchvision.models.list_models(module=torchvision.models) + SEGMENTATION
    rows = []
    for i, name in enumerate(names, 1):
        cmd = [sys.executable, __file__, "--child", name, "--size", str(args.size), "--ratio", str(args.ratio),
               "--mode", args.mode, "--heads", args.heads] + (["--onnx"] if args.onnx else [])
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if lines:
                row = json.loads(lines[-1])
            else:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                row = {"model": name, "outcome": "error", "reason": tail[:160]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "outcome": "error", "reason": f"timed out after {args.timeout}s"}
        rows.append(row)
        print(f"[{i}/{len(names)}] {name}: {row['outcome']} {row.get('reason', '')}", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
