"""What the command line shows and writes: rich tables and a status line on
stderr, the JSON report, and output files staged until the command succeeds."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__

if TYPE_CHECKING:
    from ..api import PruneResult, Report
    from ..budget import BudgetResult
    from ..onnx_export import OnnxExport


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


def report_document(result: PruneResult, latency: dict | None, onnx: OnnxExport | None = None,
                    onnx_path: str | None = None) -> dict:
    r = result.report
    return {
        "graphprune": __version__,
        "input_shape": [list(x.shape) for x in result.state.example_inputs if hasattr(x, "shape")],
        "frontend": r.frontend,
        "params": {"before": r.params_before, "after": r.params_after},
        "flops": {"before": r.flops_before, "after": r.flops_after},
        "verify": {"exact": r.exact, "max_abs_error": r.max_abs_error, "max_rel_error": r.max_rel_error},
        "latency": latency,
        "onnx": None if onnx is None else {
            "path": onnx_path,
            "exporter": onnx.exporter, "opset": onnx.opset, "max_abs_error": onnx.max_abs_error,
            "rewrites": list(onnx.rewrites),
        },
        "channels": {"before": result.plan.channels_before, "after": result.plan.channels_after},
        "budget": budget_document(r.budget),
        "replaced": r.replaced,
        "pinned_channels": r.pinned,
        "reduced_outputs": {k: {"before": b, "after": a} for k, (b, a) in r.reduced_outputs.items()},
        "heads": {k: {"dropped": list(dropped), "of": total} for k, (dropped, total) in r.heads.items()},
        "timings_s": r.timings,
        "notes": r.notes,
    }


def warn_if_slower(latency: dict | None, options: dict) -> None:
    """A pruned model slower than the dense one is never silent: say so, in red, with the fix."""
    if not latency or latency["speedup"] >= 1:
        return
    fixes = []
    if options.get("round_to") in (1, None):
        fixes.append("round channel counts to what ONNX Runtime runs fast (--round-to auto)")
    fixes += ["prune further (a larger --ratio)", "or ask for the speed directly (--target-latency 0.7)"]
    console().print(
        f"[bold red]warning: the pruned model is SLOWER than the dense one on ONNX Runtime here "
        f"({latency['compact_ms']:.2f} ms vs {latency['dense_ms']:.2f} ms, {latency['speedup']:.2f}x).[/bold red] "
        f"To fix it: {'; '.join(fixes)}.")


def setting(options: dict) -> str:
    """How much was asked for, in words: the ratio, or the target."""
    if options.get("target_flops") is not None:
        return f"target FLOPs {options['target_flops']:g}"
    if options.get("target_latency") is not None:
        return f"target latency {options['target_latency']:g}"
    return f"ratio {options['ratio']:g}"


def budget_document(budget: BudgetResult | None) -> dict | None:
    """The report's ``budget`` entry (its keys are the JSON report's format)."""
    if budget is None:
        return None
    common = {"flops_dense": budget.flops_dense, "flops_predicted": budget.flops_predicted,
              "ranked_dropped": budget.ranked_dropped, "ranked": budget.ranked}
    if budget.kind == "flops":
        return {"target_flops": budget.target, "flops_fraction": budget.achieved,
                "flops_confirmed": budget.flops_confirmed, "trade_flops": budget.trade, **common}
    return {"target_latency": budget.target, "latency_fraction": budget.achieved,
            "latency_dense_ms": budget.dense_ms, "latency_compact_ms": budget.compact_ms,
            "latency_flops_fraction": budget.flops_fraction, "latency_candidates": budget.candidates,
            "latency_method": budget.method, "trade_flops": budget.trade, **common}


def budget_rows(report: Report) -> list[list[str]]:
    """Target vs achieved, for a compile with target_flops or target_latency."""
    b = report.budget
    if b is None:
        return []
    if b.kind == "flops":
        return [["FLOPs target", "", f"{b.target:.1%}", f"achieved {b.achieved:.1%}"]]
    return [["latency target (search, ms)", f"{b.dense_ms:.2f}", f"{b.compact_ms:.2f}",
             f"achieved {b.achieved:.1%} vs target {b.target:.1%}"]]
