#!/usr/bin/env python
"""graphprune against Torch-Pruning on torchvision models: time, peak memory,
params, FLOPs, and whether each tool's compact model equals its own masked model.

Both tools prune the same model (random weights, eval mode) at 1x3x224x224 with
ratio 0.5, L1 magnitude, one ratio per coupled group, the final classifier
(the model's last ``nn.Linear``) left alone:

- graphprune: ``graphprune.prune(..., criterion="l1", mode="group", verify=False)``
  with the pipeline cut after ``rewrite``. Its time is the wall time of that call
  (trace up to the compact model); building the masked model and verifying are
  timed on their own. The classifier is not passed to ``ignore``: its outputs
  reach the model output, so graphprune pins them anyway, and ``ignore`` would
  also keep its *inputs* whole, which Torch-Pruning's ``ignored_layers`` does not.
- Torch-Pruning: ``MetaPruner(model, x, importance=MagnitudeImportance(p=1),
  pruning_ratio=0.5, ignored_layers=[classifier])`` then ``step()``. Its time is
  pruner construction (dependency graph) plus the step.

User-facing time (a second table): what a user waits for. graphprune: the whole
``graphprune.prune(model, x, ratio=0.5, criterion="l1", mode="group", verify=False)``
call with the default pipeline (FLOPs count included; the masked model is built
where verification needs it, so only in the verified call), and the
same call with ``verify=True`` (the default); Torch-Pruning: ``MetaPruner``
construction + a plain ``step()`` on a fresh copy of the model. Each is the best
of ``--user-repeat`` calls (2), in the same child as the case above, after it
(so imports and first-call costs are paid); the ratios GP/TP are per model and
the summary line gives their median.

Every case runs in a fresh child process (a fresh deepcopy of the model there),
so a tool that crashes, runs out of memory or passes ``--timeout`` is recorded
with its error and the benchmark goes on. Peak memory is the child's peak
resident set (VmHWM, reset after the model is built and warmed up) minus its
resident set just before the case: torch allocates CPU tensors with the C
allocator, which tracemalloc does not see. Cases alternate order (model A: TP
then GP, model B: GP then TP, ...) so that a noisy machine hurts both alike;
the table reports ratios measured in the same run.

"Exact" means: the compact model's outputs equal the masked model's (the
original with the dropped channels zeroed: filters, biases, norm gamma and
beta) on the example input and one random input, max error relative to the
largest output below 1e-4. For graphprune the masked model is ``result.masked``;
for Torch-Pruning the script records the indices each group removes (read from
``step(interactive=True)`` before ``group.prune()``), maps them back to the
original channel positions, and zeroes them in a copy of the original.

    python benchmarks/vs_torch_pruning.py --json vs_tp.json
    python benchmarks/vs_torch_pruning.py --models resnet50 densenet121 --repeat 3
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

MODELS = [
    "resnet18", "resnet50", "resnet152", "densenet121", "densenet201", "inception_v3", "googlenet",
    "mobilenet_v3_large", "efficientnet_b0", "efficientnet_v2_s", "convnext_tiny", "regnet_y_1_6gf",
    "shufflenet_v2_x1_0", "swin_t",
]
SHAPE = (1, 3, 224, 224)
RATIO = 0.5
TOLERANCE = 1e-4
RESULT_TAG = "VS_TP_RESULT "


# -- child side: one case -----------------------------------------------------

def build_model(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"weights": None}
    if name in ("googlenet", "inception_v3"):
        kwargs.update(aux_logits=False, init_weights=False)
    return torchvision.models.get_model(name, **kwargs).eval()


def classifier_name(model) -> str:
    import torch.nn as nn

    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak resident set growth of this process over a block of code, in bytes.

    Linux resets the high-water mark (VmHWM) when "5" is written to
    /proc/self/clear_refs; where that is not allowed, the lifetime peak
    (ru_maxrss) is used, which can only over-report."""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.resettable = True
        except OSError:
            self.resettable = False
        self.base_kb = _status_kb("VmRSS") or 0
        return self

    def __exit__(self, *exc: Any) -> None:
        peak = _status_kb("VmHWM") if self.resettable else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.bytes = max(0, peak - self.base_kb) * 1024


def tensor_bytes(model) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model, x) -> int:
    """torch.utils.flop_counter's count, as graphprune counts it for both tools
    (nn.MultiheadAttention's fused kernel and the CPU's attention kernel counted)."""
    from graphprune.flops import count_flops as counted

    return counted(model, (x,))


def relative_error(a, b) -> float:
    """Max |a - b| over the largest |a|, over every output tensor."""
    import torch
    from torch.utils._pytree import tree_leaves

    la, lb = tree_leaves(a), tree_leaves(b)
    if len(la) != len(lb):
        return float("inf")
    worst = 0.0
    for x, y in zip(la, lb):
        if not isinstance(x, torch.Tensor):
            continue
        if not isinstance(y, torch.Tensor) or x.shape != y.shape:
            return float("inf")
        x, y = x.double(), y.double()
        worst = max(worst, float((x - y).abs().max()) / max(float(x.abs().max()), 1e-12))
    return worst


def compare_models(masked, compact, inputs) -> float:
    import torch

    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            worst = max(worst, relative_error(masked(x.clone()), compact(x.clone())))
    return worst


def run_graphprune(model, x, classifier: str) -> dict[str, Any]:
    import dataclasses

    import graphprune
    from graphprune.passes import MaskPass, VerifyPass

    # Up to the compact model: trace .. rewrite. The masked model (a trainable
    # reference, which Torch-Pruning does not build either: this script builds
    # its masked model outside the timing) is built with verification.
    pipeline = graphprune.Pipeline.default()
    for name in ("mask", "fold", "verify", "measure"):
        pipeline = pipeline.remove(name)
    with PeakMemory() as memory:
        start = time.perf_counter()
        result = graphprune.prune(
            model, x, ratio=RATIO, criterion="l1", mode="group", verify=False, pipeline=pipeline,
        )
        seconds = time.perf_counter() - start
    state = result.state
    state.config = dataclasses.replace(state.config, verify="report")
    start = time.perf_counter()
    MaskPass()(state)
    VerifyPass()(state)
    verify_seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "peak_bytes": memory.bytes,
        "compile_seconds": result.report.compile_seconds,
        "verify_seconds": verify_seconds,
        "verify_exact": state.verification.exact if state.verification is not None else None,
        "passes_ms": {k: round(v * 1000, 1) for k, v in result.report.timings.items()},
        "compact": result.compact,
        "masked": state.masked,
    }


def best_of(repeat: int, call) -> tuple[float, Any]:
    """The shortest wall time of ``repeat`` calls of ``call()``, and the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        out = None  # the previous result is freed before the next call
        gc.collect()
        start = time.perf_counter()
        out = call()
        best = min(best, time.perf_counter() - start)
    return best, out


def user_graphprune(model, x, repeat: int) -> dict[str, Any]:
    """The whole ``prune()`` call as a user makes it, verify off and on (best of ``repeat``)."""
    import graphprune

    out: dict[str, Any] = {}
    for key, verify in (("user_seconds", False), ("user_verify_seconds", True)):
        seconds, result = best_of(repeat, lambda v=verify: graphprune.prune(
            model, x, ratio=RATIO, criterion="l1", mode="group", verify=v))
        out[key] = seconds
        out[key.replace("seconds", "passes_ms")] = {k: round(v * 1000, 1) for k, v in result.report.timings.items()}
        if verify:
            out["user_verify_exact"] = result.report.exact
        del result
    return out


def user_torch_pruning(model, x, classifier: str, repeat: int) -> dict[str, Any]:
    """``MetaPruner`` construction + ``step()`` on a fresh copy (copied outside the timing), best of ``repeat``."""
    import torch_pruning as tp

    pruner_class = getattr(tp.pruner, "MetaPruner", None) or tp.pruner.BasePruner
    best = float("inf")
    for _ in range(repeat):
        work = copy.deepcopy(model)
        gc.collect()
        start = time.perf_counter()
        pruner = pruner_class(
            work, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=RATIO,
            ignored_layers=[work.get_submodule(classifier)],
        )
        pruner.step()
        best = min(best, time.perf_counter() - start)
        del pruner, work
    return {"user_seconds": best}


def _plain(idxs) -> list[int]:
    return [int(getattr(i, "idx", i)) for i in idxs]


def torch_pruning_masked(original, records, dg) -> tuple[Any, list[str]]:
    """A copy of ``original`` with every channel the Torch-Pruning groups
    removed zeroed where it is written: conv/linear filter and bias, norm
    gamma and beta, unwrapped parameters. Group indices are positions in the
    model as it was when the group was made (earlier groups had already
    pruned it), so each is mapped back through the positions still alive."""
    import torch
    import torch.nn as nn

    masked = copy.deepcopy(original)
    modules = dict(masked.named_modules())
    alive: dict[tuple[str, str, int], list[int]] = {}
    unsupported: list[str] = []

    def to_original(key: tuple[str, str, int], size: int, idxs: list[int]) -> list[int]:
        positions = alive.setdefault(key, list(range(size)))
        gone = set(idxs)
        alive[key] = [p for i, p in enumerate(positions) if i not in gone]
        return [positions[i] for i in idxs]

    with torch.no_grad():
        for kind, name, handler, idxs, dim in records:
            if not idxs or not dg.is_out_channel_pruning_fn(handler):
                continue  # an input dim: it reads the channel, it does not write it
            if kind == "param":
                owner, _, attr = name.rpartition(".")
                tensor = getattr(masked.get_submodule(owner), attr)
                index = to_original((name, "param", dim), tensor.shape[dim], idxs)
                tensor.index_fill_(dim, torch.tensor(index), 0.0)
                continue
            module = modules.get(name) if name is not None else None
            if module is None:
                continue  # one of Torch-Pruning's op nodes (add, cat, ...): nothing to zero
            if isinstance(module, nn.modules.conv._ConvNd):
                slots = [("weight", 1 if module.transposed else 0), ("bias", 0)]
            elif isinstance(module, nn.Linear):
                slots = [("weight", 0), ("bias", 0)]
            elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.PReLU)):
                slots = [("weight", -1), ("bias", -1)]
            else:
                unsupported.append(f"{type(module).__name__} {name}")
                continue
            index = None
            for attr, d in slots:
                tensor = getattr(module, attr, None)
                if not isinstance(tensor, torch.Tensor):
                    continue
                d %= tensor.ndim
                if index is None:
                    index = to_original((name, "out", 0), tensor.shape[d], idxs)
                tensor.index_fill_(d, torch.tensor(index), 0.0)
    return masked, unsupported


def run_torch_pruning(model, x, classifier: str) -> dict[str, Any]:
    import torch_pruning as tp

    pruner_class = getattr(tp.pruner, "MetaPruner", None) or tp.pruner.BasePruner
    names = {id(m): n for n, m in model.named_modules()}
    original = copy.deepcopy(model)
    records: list[tuple] = []
    with PeakMemory() as memory:
        start = time.perf_counter()
        pruner = pruner_class(
            model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=RATIO,
            ignored_layers=[model.get_submodule(classifier)],
        )
        dg = pruner.DG
        param_dims = {dg._param_to_name.get(p): d for p, d in dg.unwrapped_parameters}
        for group in pruner.step(interactive=True):
            for dep, idxs in group:
                target = dep.target.module
                if dep.target.type == tp.ops.OPTYPE.PARAMETER:
                    name = dg._param_to_name.get(target)
                    records.append(("param", name, dep.handler, list(idxs), param_dims.get(name, -1)))
                else:
                    records.append(("module", names.get(id(target)), dep.handler, list(idxs), 0))
            group.prune()
        seconds = time.perf_counter() - start
    records = [(k, n, h, _plain(i), d) for k, n, h, i, d in records]
    masked, unsupported = torch_pruning_masked(original, records, dg)
    del original
    return {
        "seconds": seconds,
        "peak_bytes": memory.bytes,
        "compact": model,
        "masked": masked,
        "unmasked_members": unsupported,
    }


def run_case(tool: str, name: str, threads: int, mem_limit_gb: float, user_repeat: int = 2) -> dict[str, Any]:
    if mem_limit_gb > 0:
        limit = int(mem_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    torch.set_num_threads(threads)
    out: dict[str, Any] = {"tool": tool, "model": name}
    model = build_model(name)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    classifier = classifier_name(model)
    out["classifier"] = classifier
    out["model_bytes"] = tensor_bytes(model)
    with PeakMemory() as forward, torch.no_grad():
        model(x.clone())
    out["forward_bytes"] = forward.bytes
    work = copy.deepcopy(model)
    gc.collect()
    try:
        run = run_graphprune(work, x, classifier) if tool == "gp" else run_torch_pruning(work, x, classifier)
    except BaseException as exc:  # a tool that fails is a result, not a crash of the benchmark
        out["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
        return out
    compact, masked = run.pop("compact"), run.pop("masked")
    out.update(run)
    compact.eval()
    masked.eval()
    out["params_dense"] = count_params(model)
    out["flops_dense"] = count_flops(model, x)
    try:
        out["params"] = count_params(compact)
        out["flops"] = count_flops(compact, x)
        check = (x, torch.randn(SHAPE, generator=torch.Generator().manual_seed(2)))
        out["rel_error"] = compare_models(masked, compact, check)
    except Exception as exc:
        out["check_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    del compact, masked, work
    if user_repeat > 0:
        try:  # on the pristine model: graphprune never modifies its input, Torch-Pruning gets a copy
            out.update(user_graphprune(model, x, user_repeat) if tool == "gp"
                       else user_torch_pruning(model, x, classifier, user_repeat))
        except BaseException as exc:
            out["user_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]
    return out


def child_main(tool: str, name: str, threads: int, mem_limit_gb: float, user_repeat: int) -> None:
    result = run_case(tool, name, threads, mem_limit_gb, user_repeat)
    sys.stdout.write(RESULT_TAG + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


# -- parent side --------------------------------------------------------------

def spawn(tool: str, name: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, os.path.abspath(__file__), "--child", tool, name,
               "--threads", str(args.threads), "--mem-limit-gb", str(args.mem_limit_gb),
               "--user-repeat", str(args.user_repeat)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"tool": tool, "model": name, "error": f"timeout after {args.timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            result = json.loads(line[len(RESULT_TAG):])
            result["child_seconds"] = time.perf_counter() - start
            return result
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"tool": tool, "model": name, "error": f"child exited {proc.returncode}: {tail}"[:300]}


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (a shared machine slows both tools, not alike)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch
    import torch_pruning
    import torchvision

    import graphprune

    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "torch_pruning": getattr(torch_pruning, "__version__", "unknown"),
        "graphprune": graphprune.__version__,
    }


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of one case: median time, largest peak, the first run's checks."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for key in ("seconds", "compile_seconds", "verify_seconds", "user_seconds", "user_verify_seconds"):
        if key in out and all(key in r for r in ok):
            out[key] = statistics.median(r[key] for r in ok)
    out["peak_bytes"] = max(r["peak_bytes"] for r in ok)
    out["repeats"] = len(ok)
    return out


def mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f}"


def fmt_error(case: dict[str, Any]) -> str:
    if "error" in case:
        return "failed"
    if "check_error" in case:
        return "compact fails"
    err = case.get("rel_error")
    if err is None:
        return "-"
    return f"{'yes' if err <= TOLERANCE else 'NO'} ({err:.1e})"


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("| model | TP s | GP s | GP/TP | TP peak MB | GP peak MB | GP/TP mem | params M dense/TP/GP "
            "| GFLOPs dense/TP/GP | TP exact (rel err) | GP exact (rel err) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        tp_case, gp_case = row["tp"], row["gp"]

        def num(case: dict[str, Any], key: str, scale: float, digits: int) -> str:
            v = case.get(key)
            return "-" if v is None or "error" in case else f"{v / scale:.{digits}f}"

        dense = gp_case if "params_dense" in gp_case else tp_case
        params = "/".join([num(dense, "params_dense", 1e6, 2), num(tp_case, "params", 1e6, 2), num(gp_case, "params", 1e6, 2)])
        flops = "/".join([num(dense, "flops_dense", 1e9, 2), num(tp_case, "flops", 1e9, 2), num(gp_case, "flops", 1e9, 2)])
        time_ratio = row.get("time_ratio")
        mem_ratio = row.get("mem_ratio")
        lines.append(
            f"| {row['model']} | {num(tp_case, 'seconds', 1, 2)} | {num(gp_case, 'seconds', 1, 2)} "
            f"| {'-' if time_ratio is None else f'{time_ratio:.2f}'} "
            f"| {mb(tp_case.get('peak_bytes')) if 'error' not in tp_case else '-'} "
            f"| {mb(gp_case.get('peak_bytes')) if 'error' not in gp_case else '-'} "
            f"| {'-' if mem_ratio is None else f'{mem_ratio:.2f}'} | {params} | {flops} "
            f"| {fmt_error(tp_case)} | {fmt_error(gp_case)} |"
        )
    return lines


def user_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("| model | TP s (construct + step) | GP s prune(verify=False) | GP/TP | GP s prune(verify=True) | GP/TP "
            "| GP s to compact (cut pipeline) | slowest passes, verify=True (ms) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        tp_case, gp_case = row["tp"], row["gp"]

        def sec(case: dict[str, Any], key: str) -> str:
            v = case.get(key)
            return "-" if v is None else f"{v:.2f}"

        def ratio(key: str, row: dict[str, Any] = row) -> str:
            v = row.get(key)
            return "-" if v is None else f"{v:.2f}"

        passes = sorted(gp_case.get("user_verify_passes_ms", {}).items(), key=lambda kv: -kv[1])[:4]
        why = gp_case.get("user_error") or gp_case.get("error") or tp_case.get("user_error") or tp_case.get("error")
        lines.append(
            f"| {row['model']} | {sec(tp_case, 'user_seconds')} | {sec(gp_case, 'user_seconds')} "
            f"| {ratio('user_ratio')} | {sec(gp_case, 'user_verify_seconds')} | {ratio('user_verify_ratio')} "
            f"| {sec(gp_case, 'seconds')} "
            f"| {', '.join(f'{k} {v:.0f}' for k, v in passes) or ('failed: ' + why if why else '-')} |"
        )
    return lines


def detail_table(rows: list[dict[str, Any]]) -> list[str]:
    head = ("| model | model MB | fwd MB | GP peak MB | budget 2*model+fwd MB | within | GP compile s "
            "| GP mask+verify s | slowest passes (ms) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        gp_case = row["gp"]
        if "error" in gp_case:
            lines.append(f"| {row['model']} | | | | | | | | failed: {gp_case['error']} |")
            continue
        budget = 2 * gp_case["model_bytes"] + gp_case["forward_bytes"]
        passes = sorted(gp_case.get("passes_ms", {}).items(), key=lambda kv: -kv[1])[:4]
        lines.append(
            f"| {row['model']} | {mb(gp_case['model_bytes'])} | {mb(gp_case['forward_bytes'])} "
            f"| {mb(gp_case['peak_bytes'])} | {mb(budget)} | {'yes' if gp_case['peak_bytes'] <= budget else 'NO'} "
            f"| {gp_case.get('compile_seconds', 0):.2f} | {gp_case.get('verify_seconds', 0):.2f} "
            f"| {', '.join(f'{k} {v:.0f}' for k, v in passes)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS, help="torchvision model names")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each case (median time, largest peak)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case before it counts as failed")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each case (both tools alike)")
    parser.add_argument("--mem-limit-gb", type=float, default=0.0,
                        help="address-space limit per case (RLIMIT_AS), 0 for none")
    parser.add_argument("--user-repeat", type=int, default=2,
                        help="user-facing calls per case (best of), 0 to skip them")
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--child", nargs=2, metavar=("TOOL", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child[0], args.child[1], args.threads, args.mem_limit_gb, args.user_repeat)
        return 0

    info = machine()
    print(f"machine: {info['cores']} cores, {info['cpu']}; torch threads per case: {args.threads}")
    print(f"versions: python {info['python']}, torch {info['torch']}, torchvision {info['torchvision']}, "
          f"torch-pruning {info['torch_pruning']}, graphprune {info['graphprune']}")
    print(f"setting: 1x3x224x224, random weights, ratio {RATIO}, L1, one ratio per coupled group, "
          f"last Linear ignored; {args.repeat} run(s) per case, timeout {args.timeout:.0f} s", flush=True)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    start = time.perf_counter()
    for rep in range(args.repeat):
        for i, name in enumerate(args.models):
            order = ("tp", "gp") if (i + rep) % 2 == 0 else ("gp", "tp")
            for tool in order:
                case = spawn(tool, name, args)
                runs.setdefault((name, tool), []).append(case)
                status = case.get("error") or f"{case['seconds']:.2f} s, peak {mb(case['peak_bytes'])} MB, {fmt_error(case)}"
                if "user_seconds" in case:
                    status += f", user-facing {case['user_seconds']:.2f} s"
                if "user_verify_seconds" in case:
                    status += f" / {case['user_verify_seconds']:.2f} s verified"
                case["load_average"] = load_average()
                print(f"  [{time.perf_counter() - start:6.0f} s] {name:<20} {tool}: {status} "
                      f"(load {case['load_average']})", flush=True)

    rows = []
    for name in args.models:
        tp_case, gp_case = merge(runs[(name, "tp")]), merge(runs[(name, "gp")])
        row: dict[str, Any] = {"model": name, "tp": tp_case, "gp": gp_case}
        if "error" not in tp_case and "error" not in gp_case:
            row["time_ratio"] = gp_case["seconds"] / tp_case["seconds"]
            row["mem_ratio"] = gp_case["peak_bytes"] / max(tp_case["peak_bytes"], 1)
        for key in ("user_seconds", "user_verify_seconds"):
            if gp_case.get(key) is not None and tp_case.get("user_seconds"):
                row[key.replace("seconds", "ratio")] = gp_case[key] / tp_case["user_seconds"]
        rows.append(row)

    print()
    print("TP s: MetaPruner construction + step(); GP s: graphprune.prune up to the compact model "
          "(trace .. rewrite; masked model and verification timed apart); peak MB: child peak RSS growth "
          "during that call")
    print("\n".join(table(rows)))
    time_ratios = [r["time_ratio"] for r in rows if "time_ratio" in r]
    mem_ratios = [r["mem_ratio"] for r in rows if "mem_ratio" in r]
    summary: dict[str, Any] = {}
    if time_ratios:
        summary = {
            "median_time_ratio": statistics.median(time_ratios),
            "max_time_ratio": max(time_ratios),
            "median_memory_ratio": statistics.median(mem_ratios),
            "models_compared": len(time_ratios),
        }
        print(f"\nmedian GP/TP time ratio: {summary['median_time_ratio']:.2f} "
              f"(max {summary['max_time_ratio']:.2f}); median GP/TP peak memory ratio: "
              f"{summary['median_memory_ratio']:.2f}; over {len(time_ratios)} models both tools pruned")
    print(f"\nuser-facing time: the whole call a user makes, best of {args.user_repeat} per case, same child; "
          "TP: MetaPruner construction + step(); GP: graphprune.prune(ratio=0.5, l1, group) with the default pipeline")
    print("\n".join(user_table(rows)))
    for key, label in (("user_ratio", "verify=False"), ("user_verify_ratio", "verify=True")):
        ratios = [r[key] for r in rows if key in r]
        if ratios:
            worst = max((r for r in rows if key in r), key=lambda r: r[key])
            summary[f"median_{key}"] = statistics.median(ratios)
            summary[f"max_{key}"] = worst[key]
            print(f"median user-facing GP/TP time ratio, {label}: {statistics.median(ratios):.2f} "
                  f"(max {worst[key]:.2f}, {worst['model']}; {sum(x <= 1 for x in ratios)} of {len(ratios)} at or "
                  f"below 1.0) over {len(ratios)} models")
    failed = [f"{r['model']} {tool}: {r[tool]['error']}" for r in rows for tool in ("tp", "gp") if "error" in r[tool]]
    for line in failed:
        print(f"failed: {line}")
    print("\ngraphprune memory budget (peak <= 2 x model tensors + one batch-1 forward) and time split")
    print("\n".join(detail_table(rows)))
    print(f"\nbenchmark wall time: {time.perf_counter() - start:.0f} s")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"machine": info, "threads": args.threads, "repeat": args.repeat, "ratio": RATIO,
                       "shape": SHAPE, "tolerance": TOLERANCE, "summary": summary, "rows": rows}, f,
                      indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
