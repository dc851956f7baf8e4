"""The command line: outputs, exit codes, one-line errors.

Most tests call ``graphprune.cli.main`` in this process, through the ``cli``
fixture: a subprocess re-imports torch (about 4 s each). The slow tier
(``-m slow``) runs the same tests again through the real console script in a
subprocess (there, a one-line error is the whole stderr of a real process,
import-time warnings included). The console script itself runs in a
subprocess in the default tier too, where what a real process prints is what
is checked: ``--help`` and JSON on stdout.
"""

import json
import os
import shutil
import subprocess
import sys
import warnings

import onnx
import pytest
import torch
import torchvision

import graphprune
from graphprune.cli import main

SCRIPT = shutil.which("graphprune", path=os.path.dirname(sys.executable)) or "graphprune"


def run_script(*args, cwd):
    """The console script in a subprocess: (exit code, stdout, stderr)."""
    done = subprocess.run([SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout, done.stderr


def fresh_interpreter_warning_filters() -> None:
    """The warning filters of a plain ``python`` process (no -W, no dev mode)."""
    warnings.resetwarnings()
    warnings.filterwarnings("ignore", category=ResourceWarning)
    warnings.filterwarnings("ignore", category=ImportWarning)
    warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")


def run_in_process(capfd, *args):
    """``main(args)`` here, as the console script would run it: (exit code,
    stdout, stderr). Output is captured at the file descriptors, so what C
    code prints counts too; warnings a plain process would print to stderr
    are added to stderr (pytest would otherwise collect them quietly)."""
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        fresh_interpreter_warning_filters()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse exits on --help and on malformed arguments
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capfd.readouterr()
    err += "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line) for w in caught)
    return code, out, err


@pytest.fixture(params=["in-process", pytest.param("subprocess", marks=pytest.mark.slow)])
def cli(request, tmp_path, monkeypatch, capfd):
    """Runs the command line in ``tmp_path``: ``code, out, err = cli(*args)``."""
    if request.param == "subprocess":
        return lambda *args: run_script(*args, cwd=tmp_path)
    monkeypatch.chdir(tmp_path)
    return lambda *args: run_in_process(capfd, *args)


def test_help_lists_commands_and_examples(tmp_path):
    code, out, _ = run_script("--help", cwd=tmp_path)
    assert code == 0
    assert "prune" in out and "inspect" in out and "bench" in out and "examples:" in out


def test_prune_writes_onnx_saved_model_and_report(cli, tmp_path):
    code, out, err = cli(
        "prune", "resnet18", "--input-shape", "1,3,32,32", "--ratio", "0.5",
        "-o", "r18.onnx", "--save", "r18", "--report", "report.json", "--no-latency",
    )
    assert code == 0, err
    assert (tmp_path / "r18.onnx").stat().st_size > 0
    assert (tmp_path / "r18" / "plan.json").is_file() and (tmp_path / "r18" / "weights.pt").is_file()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["params"]["after"] < report["params"]["before"]
    assert report["verify"]["exact"] is True
    assert report["onnx"]["max_abs_error"] <= 1e-4
    assert "parameters" in out and "FLOPs" in out


def test_prune_json_goes_to_stdout(tmp_path):
    # a real process: nothing but the JSON document may reach its stdout
    code, out, err = run_script("prune", "squeezenet1_1", "--input-shape", "1,3,32,32", "--json", "--no-latency",
                                cwd=tmp_path)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["flops"]["after"] < doc["flops"]["before"]


def one_line_error(code, out, err, match):
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("graphprune: error:") and match in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "args, match",
    [
        (["--ratio", "1.5"], "ratio must be in [0, 1)"),
        (["--ratio", "-0.1"], "ratio must be in [0, 1)"),
        (["--input-shape", "1,3,x,32"], "--input-shape must be comma-separated positive integers"),
        (["--weights", "missing.pt"], "weights file 'missing.pt' does not exist"),
    ],
    ids=["ratio-1.5", "ratio-negative", "bad-shape", "missing-weights"],
)
def test_bad_arguments_fail_with_one_line_and_write_nothing(cli, tmp_path, args, match):
    code, out, err = cli("prune", "resnet18", "--input-shape", "1,3,32,32", *args, "-o", "x.onnx",
                         "--save", "saved", "--no-latency")
    one_line_error(code, out, err, match)
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "saved").exists()


def test_unknown_model_name_suggests_close_ones(cli):
    code, out, err = cli("prune", "resnet19", "--input-shape", "1,3,32,32")
    one_line_error(code, out, err, "unknown model 'resnet19'; did you mean")


def test_weights_for_another_architecture_name_the_mismatch(cli, tmp_path):
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), tmp_path / "r34.pt")
    code, out, err = cli("prune", "resnet18", "--weights", "r34.pt", "--input-shape", "1,3,32,32", "-o", "x.onnx")
    one_line_error(code, out, err, "do not fit ResNet: keys")
    assert not (tmp_path / "x.onnx").exists()


def test_inspect_prints_groups_and_pin_reasons(cli):
    code, out, err = cli("inspect", "resnet18", "--input-shape", "1,3,32,32", "--json")
    assert code == 0, err
    groups = json.loads(out)["groups"]
    fc = next(g for g in groups if g["group"] == "fc")
    assert fc["prunable"] == 0 and any("model output" in r for r in fc["pinned_because"])
    stem = next(g for g in groups if g["group"] == "conv1")
    assert "layer1.0.conv2" in stem["producers"] and stem["prunable"] == 64


def test_pickled_checkpoint_needs_the_trust_flag(cli, tmp_path):
    (tmp_path / "best.pt").write_bytes(b"not really a checkpoint")
    code, out, err = cli("prune", "best.pt", "--input-shape", "1,3,64,64")
    one_line_error(code, out, err, "pickled checkpoint: loading it runs code stored in the file. Pass --trust-checkpoint")


def test_yolo_config_name_is_a_model(cli):
    pytest.importorskip("ultralytics")
    code, out, err = cli("inspect", "yolov8n.yaml", "--input-shape", "1,3,64,64", "--json")
    assert code == 0, err
    groups = {g["group"]: g for g in json.loads(out)["groups"]}
    assert groups["model.0.conv"]["prunable"] == 16
    assert groups["model.22.cv3.0.2"]["prunable"] == 0


def test_an_onnx_output_rounds_channels_for_onnx_runtime_unless_told(tmp_path, capsys):
    from graphprune.cli import main
    from graphprune.deploy import fast_channel_multiple

    out = tmp_path / "r.onnx"
    assert main(["prune", "resnet18", "--input-shape", "1,3,32,32", "-o", str(out), "--no-latency", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    block = fast_channel_multiple()
    assert any(f"multiples of {block}" in n for n in doc["notes"])
    rounded = doc["channels"]["after"]
    assert main(["prune", "resnet18", "--input-shape", "1,3,32,32", "-o", str(out), "--no-latency", "--json",
                 "--round-to", "1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert not any("round_to auto" in n for n in doc["notes"]) and doc["channels"]["after"] != rounded
    # what auto means, group by group
    result = graphprune.prune(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32), round_to="auto", verify=False)
    for d in result.plan.decisions():
        assert d.kept_count % block == 0 or d.kept_count == d.group.size


def test_a_pruned_model_slower_than_dense_is_never_silent(tmp_path, capsys, monkeypatch):
    import graphprune.cli.commands as commands

    def slower(*args, **kwargs):
        return {"dense_ms": 1.0, "compact_ms": 1.25, "speedup": 0.8, "threads": 1, "runs": 5,
                "onnx_bytes_dense": 1, "onnx_bytes_compact": 1}

    monkeypatch.setattr(commands, "latency_rows", slower)  # a fake timer
    from graphprune.cli import main

    assert main(["prune", "resnet18", "--input-shape", "1,3,32,32", "--round-to", "1"]) == 0
    err = capsys.readouterr().err
    assert "SLOWER than the dense one" in err and "--round-to auto" in err


def test_whole_heads_from_the_command_line_are_reported(tmp_path, capsys):
    report = tmp_path / "report.json"
    assert main(["prune", "swin_t", "--input-shape", "1,3,32,32", "--mode", "group", "--heads", "whole",
                 "--no-latency", "--report", str(report)]) == 0
    heads = json.loads(report.read_text())["heads"]
    assert len(heads) == 12 and all(len(h["dropped"]) == h["of"] // 2 for h in heads.values())
    dropped, total = sum(len(h["dropped"]) for h in heads.values()), sum(h["of"] for h in heads.values())
    assert f"note: {dropped} of {total} attention heads dropped in 12 of 12 layers" in capsys.readouterr().err


def test_an_onnx_output_says_what_was_rewritten_for_onnx_runtime(tmp_path, capsys):
    pytest.importorskip("ultralytics")
    out = tmp_path / "y.onnx"
    assert main(["prune", "yolov8n.yaml", "--input-shape", "1,3,64,64", "-o", str(out), "--no-latency",
                 "--report", str(tmp_path / "r.json")]) == 0
    err = capsys.readouterr().err
    rewrites = json.loads((tmp_path / "r.json").read_text())["onnx"]["rewrites"]
    assert "softmax over an inner axis as reductions x1" in rewrites
    assert "convolutions split along their channels as one per piece x8" in rewrites  # the C2f blocks' cv1
    assert f"note: {out}: rewritten for ONNX Runtime ({'; '.join(rewrites)})" in err
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "Softmax" not in ops and "Split" not in ops  # the DFL head's, rewritten; the C2f splits


def test_the_default_input_is_the_models_own():
    """Without --input-shape, the example input (and so the ONNX file's input) is what the model's
    framework trains and exports it at: deployment code feeds the file the images it feeds the original."""
    from graphprune.cli.models import build_model, native_input_shape

    pytest.importorskip("ultralytics")
    yolo = build_model("yolov8n.yaml")
    assert native_input_shape("yolov8n.yaml", yolo) == ((1, 3, 640, 640), "ultralytics' imgsz 640")
    yolo.args = {**yolo.args, "imgsz": [480, 640]}  # a checkpoint trained at a rectangular size
    assert native_input_shape("best.pt", yolo)[0] == (1, 3, 480, 640)
    assert native_input_shape("inception_v3", torch.nn.Identity())[0] == (1, 3, 299, 299)
    assert native_input_shape("resnet18", torch.nn.Identity())[0] == (1, 3, 224, 224)
    timm = pytest.importorskip("timm")
    assert native_input_shape("timm:efficientnet_b3", timm.create_model("efficientnet_b3"))[0] == (1, 3, 288, 288)
    assert native_input_shape("mypkg.nets:build", torch.nn.Identity()) == ((1, 3, 224, 224), "graphprune's default")


def test_prune_without_an_input_shape_says_which_it_took_and_bench_reads_a_files_own(tmp_path, capsys):
    out = tmp_path / "s.onnx"
    assert main(["prune", "squeezenet1_1", "-o", str(out), "--no-latency", "--report", str(tmp_path / "r.json")]) == 0
    assert "note: example input 1x3x224x224: the model's own (the evaluation crop of torchvision's weights)" \
        in capsys.readouterr().err
    assert json.loads((tmp_path / "r.json").read_text())["input_shape"] == [[1, 3, 224, 224]]
    dims = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 224, 224] and not dims[0].HasField("dim_value")
    assert main(["bench", str(out), "--runs", "2", "--json"]) == 0  # batch 1 at the file's own 224x224
    assert json.loads(capsys.readouterr().out)["runs"] == 2
    from graphprune.cli.commands import file_input_shape

    assert file_input_shape(str(out)) == (1, 3, 224, 224)
    onnx_model = onnx.load(str(out))
    onnx_model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "height"
    onnx.save(onnx_model, str(tmp_path / "free.onnx"))
    code = main(["bench", str(tmp_path / "free.onnx")])
    assert code != 0 and "does not fix" in capsys.readouterr().err
