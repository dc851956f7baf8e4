"""How long the user waits for the README's main job, end to end.

Times whole commands in fresh processes, as a user runs them (wall clock
and peak RSS, from ``/usr/bin/time``), beside a plain script that only
imports torch and exports dense resnet18 to ONNX with
``torch.onnx.export(..., dynamo=True)``: what any ONNX deployment pays.

    python benchmarks/main_job.py [--repeat 3] [--json out.json]

Rows: the main job ``graphprune prune resnet18 -o resnet18_pruned.onnx``,
``graphprune bench mobilenet_v3_large``, and the plain script; the first run
of each is "cold" (files not in the page cache, caches empty), the others
"warm" (median of the rest). Runs are interleaved (one of each command per
round), so a busy spell on a shared machine hits every row alike.

Then where the main job's time goes, from one more run with ``--report``
(the compile's own pass timings) and a process that only imports what the
command imports: imports, the compile (trace to verify), and the rest
(exporting and checking both ONNX files, timing them, writing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PLAIN = """
import torch, torchvision
model = torchvision.models.resnet18().eval()
torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), {path!r}, dynamo=True)
"""


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of one run of ``command``."""
    with tempfile.NamedTemporaryFile(suffix=".txt") as out:
        subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", out.name, *command], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall, rss = Path(out.name).read_text().split()[-2:]
    return float(wall), float(rss) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each command (the first is the cold one)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="graphprune-main-job-"))
    graphprune = [sys.executable, "-m", "graphprune"]
    jobs = {
        "graphprune prune resnet18 -o resnet18_pruned.onnx": graphprune + ["prune", "resnet18", "-o",
                                                                          str(work / "resnet18_pruned.onnx")],
        "graphprune bench mobilenet_v3_large": graphprune + ["bench", "mobilenet_v3_large"],
        "plain: import torch, export dense resnet18 (dynamo)": [sys.executable, "-c",
                                                                PLAIN.format(path=str(work / "dense.onnx"))],
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in jobs}
    for _ in range(args.repeat):  # interleaved: a busy spell on a shared machine hits every command alike
        for name, command in jobs.items():
            runs[name].append(timed(command))
    rows = {}
    for name, done in runs.items():
        warm = done[1:] or done
        rows[name] = {"cold_s": done[0][0], "warm_s": statistics.median(r[0] for r in warm),
                      "peak_mb": max(r[1] for r in done)}
    plain = rows["plain: import torch, export dense resnet18 (dynamo)"]["warm_s"]
    print(f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, {args.repeat} runs each\n")
    print("| command | cold s | warm s | peak RSS MB | warm / plain |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| `{name}` | {row['cold_s']:.1f} | {row['warm_s']:.1f} | {row['peak_mb']:.0f} | "
              f"{row['warm_s'] / plain:.2f} |")
    split = where_time_goes(graphprune, work)
    print(f"\nthe main job, one more run: {split['wall_s']:.1f} s wall = imports {split['import_s']:.1f} s "
          f"+ compile {split['compile_s']:.2f} s (passes trace .. measure, verify included) + the rest "
          f"{split['rest_s']:.1f} s (interpreter start, exports, ONNX Runtime checks and timing, writing)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "main_job_split": split}, indent=2))


IMPORTS = """
import time
start = time.perf_counter()
import graphprune.cli.commands, graphprune.onnx_export, graphprune.onnx_latency, torchvision
print(time.perf_counter() - start)
"""


def where_time_goes(graphprune: list[str], work: Path) -> dict[str, float]:
    report = work / "report.json"
    wall, _ = timed(graphprune + ["prune", "resnet18", "-o", str(work / "split.onnx"), "--report", str(report)])
    compile_s = sum(json.loads(report.read_text())["timings_s"].values())
    imports = subprocess.run([sys.executable, "-c", IMPORTS], check=True, capture_output=True, text=True)
    import_s = float(imports.stdout.split()[-1])
    return {"wall_s": wall, "import_s": import_s, "compile_s": compile_s, "rest_s": wall - import_s - compile_s}


if __name__ == "__main__":
    main()
