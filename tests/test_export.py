"""ONNX export is checked on ONNX Runtime; latency is measured there too."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

import graphprune
import graphprune.onnx_export
from graphprune import Pipeline
from graphprune.errors import ExportError, PipelineError
from graphprune.onnx_export import export_onnx
from graphprune.onnx_latency import compare_latency, measure_latency
from graphprune.passes import ExportPass, LatencyPass

# densenet121, the largest graph here (about a third of this file's time), is in the slow tier.
ZOO = ["resnet18", "mobilenet_v3_small", pytest.param("densenet121", marks=pytest.mark.slow),
       "shufflenet_v2_x0_5", "convnext_tiny"]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def onnxruntime_output(path_or_session, x):
    session = path_or_session
    if not isinstance(session, ort.InferenceSession):
        session = ort.InferenceSession(str(path_or_session), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


@pytest.fixture(scope="module")
def zoo_export(zoo, tmp_path_factory):
    # The model and its compile come from the session fixture `zoo`
    # (conftest.py), shared with test_zoo.py.
    result, x = zoo.compiled("per_layer"), zoo.x
    folder = tmp_path_factory.mktemp(zoo.name)
    # The compact file takes the default path (dynamo); the dense one, only a
    # reference, the legacy exporter: both exporters meet every model, and
    # this file runs in about two thirds of the time.
    dense = export_onnx(result.state.graph, x, folder / "dense.onnx", exporter="legacy")
    compact = export_onnx(result.compact, x, folder / "compact.onnx")
    return result, dense, compact, x


zoo_models = pytest.mark.parametrize("zoo", ZOO, indirect=True)


@zoo_models
def test_onnxruntime_computes_what_pytorch_computes_at_any_batch(zoo_export):
    result, dense, compact, x = zoo_export
    for info, model in ((dense, result.state.graph), (compact, result.compact)):
        onnx.checker.check_model(str(info.path))
        assert info.dynamic_batch and info.batch_sizes == (1, 3)
        assert info.max_abs_error <= 1e-4
        session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
        for batch in (x, torch.randn(3, *x.shape[1:])):
            with torch.no_grad():
                expected = model(batch)
            got = onnxruntime_output(session, batch)
            assert got.shape == (batch.shape[0], 10)
            assert (got - expected).abs().max().item() <= 1e-4
            assert expected.abs().max().item() > 1e-3  # outputs that vanish would make this check empty


@zoo_models
def test_compact_file_is_smaller_and_self_contained(zoo_export):
    _, dense, compact, _ = zoo_export
    assert compact.size_bytes < dense.size_bytes
    assert compact.size_bytes == compact.path.stat().st_size
    assert sorted(p.name for p in compact.path.parent.iterdir()) == ["compact.onnx", "dense.onnx"]
    assert compact.external_data == ()
    assert compact.exporter == "legacy" and compact.fallback_reason is None  # the faster exporter, first
    assert onnx.load(str(compact.path)).opset_import[0].version == compact.opset


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_each_exporter_can_be_forced(exporter, tmp_path):
    model, x = Net().eval(), torch.randn(2, 3, 8, 8)
    info = export_onnx(model, x, tmp_path / "net.onnx", exporter=exporter, dynamic_batch=False)
    assert info.exporter == exporter and info.fallback_reason is None
    assert info.batch_sizes == (2,)
    assert torch.allclose(onnxruntime_output(info.path, x), model(x).detach(), atol=1e-5)
    with pytest.raises(InvalidArgument):  # a fixed batch rejects another one
        onnxruntime_output(info.path, torch.randn(3, 3, 8, 8))


class FixedBatch(Net):
    def forward(self, x):
        n = int(x.shape[0])  # traced as a constant: the exported graph only takes this batch size
        return self.fc(torch.relu(self.bn(self.conv(x))).reshape(n, 16, -1).mean(2))


def test_a_model_that_fixes_its_batch_size_is_refused_a_dynamic_batch(tmp_path):
    model, x = FixedBatch().eval(), torch.randn(1, 3, 8, 8)
    expected = (
        r"legacy exporter: .*output shapes \[\(1, 4\)\] on the legacy-exported model with batch 3 "
        r"are not PyTorch's \[\(3, 4\)\] \(if the model fixes its batch size, pass dynamic_batch=False\); "
        r"dynamo exporter: .*\(if the model fixes its batch size, pass dynamic_batch=False\)$"
    )
    with pytest.raises(ExportError, match=expected):
        export_onnx(model, x, tmp_path / "net.onnx")
    assert list(tmp_path.iterdir()) == []
    info = export_onnx(model, x, tmp_path / "net.onnx", dynamic_batch=False)
    assert info.batch_sizes == (1,) and info.max_abs_error <= 1e-5


def test_auto_falls_back_to_dynamo_when_legacy_fails(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("legacy cannot trace this\nmore detail")

    monkeypatch.setitem(graphprune.onnx_export._EXPORT, "legacy", broken)
    info = export_onnx(Net(), torch.randn(1, 3, 8, 8), tmp_path / "net.onnx")
    assert info.exporter == "dynamo"
    assert info.fallback_reason == "legacy exporter: RuntimeError: legacy cannot trace this"
    assert [p.name for p in tmp_path.iterdir()] == ["net.onnx"]


def test_export_that_onnxruntime_disagrees_with_raises_and_leaves_nothing(tmp_path, monkeypatch):
    real = graphprune.onnx_export.run_onnxruntime
    monkeypatch.setattr(
        graphprune.onnx_export, "run_onnxruntime", lambda session, inputs: [y + 0.5 for y in real(session, inputs)]
    )
    model = Net()
    expected = r"differs from PyTorch's on the dynamo-exported model with batch 1: max abs error 0\.5, relative [0-9.e+-]+ > tolerance 0\.0001$"
    with pytest.raises(ExportError, match=expected):
        export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "net.onnx", exporter="dynamo")
    with pytest.raises(ExportError, match="legacy exporter: ExportError: .*; dynamo exporter: ExportError: "):
        export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path / "net.onnx")
    assert list(tmp_path.iterdir()) == []
    assert model.training  # its mode is restored


def test_latency_is_measured_with_the_threads_asked_for(tmp_path):
    x = torch.randn(1, 3, 16, 16)
    info = export_onnx(Net(), x, tmp_path / "net.onnx", exporter="legacy")
    latency = measure_latency(info.path, x, warmup=1, runs=7, threads=1)
    assert latency.runs == 7 and latency.threads == 1
    assert latency.provider == "CPUExecutionProvider"
    assert (
        0 < latency.min_ms <= latency.p10_ms <= latency.median_ms <= latency.p90_ms <= latency.max_ms < 1000
    )

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(info.path), options, providers=["CPUExecutionProvider"])
    assert measure_latency(session, {"input": x.numpy()}, runs=3).threads == 2

    comparison = compare_latency(info.path, info.path, x, flops=(300, 100), warmup=0, runs=3, threads=1)
    assert comparison.flops_ratio == 3.0
    assert comparison.dense.runs == comparison.compact.runs == 3
    assert np.isfinite(comparison.speedup) and comparison.speedup > 0


def test_every_round_of_a_comparison_starts_with_untimed_runs_of_its_model(tmp_path, monkeypatch):
    # the session timed before leaves its threads spinning: the first runs after a switch are not timed
    from graphprune import onnx_latency

    x = torch.randn(1, 3, 16, 16)
    info = export_onnx(Net(), x, tmp_path / "net.onnx", exporter="legacy")
    calls, run = [], onnx_latency._run
    monkeypatch.setattr(onnx_latency, "_run", lambda s, feed, n: calls.append((id(s), n)) or run(s, feed, n))
    compare_latency(info.path, info.path, x, warmup=2, runs=4, rounds=3, threads=1)
    dense, compact = calls[0][0], calls[1][0]
    assert [c[1] for c in calls[:2]] == [2, 2]  # each model's first warm-up
    rounds = calls[2:]
    assert len(rounds) == 12 and [s for s, _ in rounds] == [dense, dense, compact, compact] * 3
    assert all(n >= 1 for _, n in rounds[0::2]) and all(n == 4 for _, n in rounds[1::2])
    adaptive = compare_latency(info.path, info.path, x, warmup=1, runs=None, threads=1)
    assert adaptive.dense.runs >= 3 * 5 and adaptive.dense.runs == adaptive.compact.runs


def test_export_and_latency_passes_in_a_pipeline(tmp_path):
    pipeline = (
        Pipeline.default()
        .insert_after("measure", ExportPass(tmp_path / "compact.onnx", dense_path=tmp_path / "dense.onnx"))
        .insert_after("export", LatencyPass(warmup=1, runs=5, threads=1))
    )
    assert pipeline.names[-3:] == ["measure", "export", "latency"]
    x = torch.randn(1, 3, 16, 16)
    result = graphprune.prune(Net(), x, ratio=0.5, pipeline=pipeline)

    onnx_results = result.state.measurements["onnx"]
    assert onnx_results["compact"].path == tmp_path / "compact.onnx"
    assert onnx_results["compact"].size_bytes < onnx_results["dense"].size_bytes
    with torch.no_grad():
        assert torch.allclose(onnxruntime_output(tmp_path / "compact.onnx", x), result.compact(x), atol=1e-5)

    latency = result.state.measurements["latency"]
    assert latency["compact"].runs == 5 and latency["dense"].threads == 1
    report = result.report
    assert latency["comparison"].flops_ratio == pytest.approx(report.flops_before / report.flops_after)
    assert any(note.startswith("ONNX Runtime: dense") for note in report.notes)


def test_latency_pass_without_export_pass_says_what_is_missing():
    pipeline = Pipeline.default().insert_after("measure", LatencyPass())
    with pytest.raises(PipelineError, match="add an ExportPass before it"):
        graphprune.prune(Net(), torch.randn(1, 3, 8, 8), pipeline=pipeline)


class Distribution(nn.Module):
    """YOLOv8's DFL head in small: a softmax over 16 bins on axis 1, beside one over the last axis."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 64, 1)

    def forward(self, x):
        y = self.conv(x).view(x.shape[0], 16, 4, -1)
        return y.softmax(1), y.softmax(-1)


@pytest.mark.parametrize("exporter, opset", [("legacy", 17), ("legacy", None), ("dynamo", None)])
def test_softmax_over_an_inner_axis_is_written_as_reductions_and_checked(tmp_path, exporter, opset):
    model, x = Distribution().eval(), torch.randn(2, 3, 8, 10)
    rewritten = export_onnx(model, x, tmp_path / "dfl.onnx", exporter=exporter, opset=opset)
    plain = export_onnx(model, x, tmp_path / "plain.onnx", exporter=exporter, opset=opset, rewrite=False)
    assert rewritten.rewrites == ("softmax over an inner axis as reductions x1",) and plain.rewrites == ()
    ops = {name: [n.op_type for n in onnx.load(str(info.path)).graph.node]
           for name, info in (("rewritten", rewritten), ("plain", plain))}
    assert ops["plain"].count("Softmax") == 2
    assert ops["rewritten"].count("Softmax") == 1  # the last-axis one stays ONNX Runtime's own kernel
    assert {"ReduceMax", "Sub", "Exp", "ReduceSum", "Div"} <= set(ops["rewritten"])
    fresh = torch.randn(3, 3, 8, 10)  # another batch size: the batch stays dynamic
    with torch.no_grad():
        expected = [t.numpy() for t in model(fresh)]
    for info in (rewritten, plain):
        session = ort.InferenceSession(str(info.path), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: fresh.numpy()})
        assert all(np.abs(g - e).max() <= 1e-5 for g, e in zip(got, expected, strict=True))


class SplitBlock(nn.Module):
    """YOLO's C2f in small: cv1's output (after its activation) cut in two along the channels,
    the second piece through a conv, everything concatenated."""

    def __init__(self, sizes=None, act=F.silu, also_read=False):
        super().__init__()
        self.sizes, self.act, self.also_read = sizes, act, also_read
        self.cv1, self.m = nn.Conv2d(3, 8, 1), nn.Conv2d((sizes or [4, 4])[1], 4, 3, padding=1)
        self.cv2 = nn.Conv2d(12, 6, 1)

    def forward(self, x):
        y = self.act(self.cv1(x))
        a, b = y.chunk(2, 1) if self.sizes is None else y.split(self.sizes, 1)
        out = self.cv2(torch.cat([a, b, self.m(b)], 1))
        return (out, y.mean((2, 3))) if self.also_read else out


def _ops(info) -> list[str]:
    return [n.op_type for n in onnx.load(str(info.path)).graph.node]


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("sizes, act", [(None, F.silu), ([3, 5], F.silu), ([3, 5], F.relu)])
def test_a_convolution_split_along_its_channels_becomes_one_per_piece(tmp_path, exporter, sizes, act):
    """ONNX Runtime's blocked convolutions do not take Split or Slice: each piece gets its own conv
    (a chunk exported with a dynamic batch reads its bounds from the shape: those become constants)."""
    model, x = SplitBlock(sizes, act).eval(), torch.randn(2, 3, 8, 10)
    rewritten = export_onnx(model, x, tmp_path / "split.onnx", exporter=exporter)
    plain = export_onnx(model, x, tmp_path / "plain.onnx", exporter=exporter, rewrite=False)
    assert "convolutions split along their channels as one per piece x1" in rewritten.rewrites
    ops, before = _ops(rewritten), _ops(plain)
    assert ops.count("Conv") == before.count("Conv") + 1
    assert not {"Split", "Slice", "Shape"} & set(ops) and {"Split", "Slice"} & set(before)
    fresh = torch.randn(3, 3, 8, 10)  # another batch size: the batch stays dynamic
    session = ort.InferenceSession(str(rewritten.path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(fresh).numpy()
    got = session.run(None, {session.get_inputs()[0].name: fresh.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-5


def test_a_convolution_output_read_whole_elsewhere_is_not_split(tmp_path):
    model, x = SplitBlock([3, 5], also_read=True).eval(), torch.randn(2, 3, 8, 10)
    rewritten = export_onnx(model, x, tmp_path / "split.onnx", exporter="legacy")
    assert not any(r.startswith("convolutions split") for r in rewritten.rewrites)
    assert "Split" in _ops(rewritten)


class SplitBlock1d(nn.Module):
    """The same on a sequence (Conv1d: the channel axis is 1 of 3, which -2 names too)."""

    def __init__(self):
        super().__init__()
        self.cv1, self.m = nn.Conv1d(3, 8, 1), nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        a, b = F.silu(self.cv1(x)).split([4, 4], -2)
        return torch.cat([a, self.m(b)], 1)


def test_a_one_dimensional_convolution_is_split_along_its_channels_too(tmp_path):
    model, x = SplitBlock1d().eval(), torch.randn(2, 3, 16)
    rewritten = export_onnx(model, x, tmp_path / "split1d.onnx", exporter="legacy")
    assert "convolutions split along their channels as one per piece x1" in rewritten.rewrites
    assert "Split" not in _ops(rewritten)
