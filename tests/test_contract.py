"""The output contract: channels that reach only outputs outside it are pruned."""

import os
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.errors import ConfigError


class TwoHeads(nn.Module):
    """A trunk and two heads; ``form`` says how the outputs are returned."""

    def __init__(self, form: str = "dict"):
        super().__init__()
        self.form = form
        self.trunk = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 4, 1)
        self.b1 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        t = F.relu(self.trunk(x))
        a, b = self.a(t), self.b2(F.relu(self.b1(t)))
        return {"a": a, "b": b} if self.form == "dict" else (a, [b])


X = torch.randn(2, 3, 8, 8)


@pytest.mark.parametrize("form, selector", [
    ("dict", "a"), ("dict", ["a"]), ("dict", lambda out: out["a"]),
    ("tuple", 0), ("tuple", (0,)), ("tuple", "0"), ("tuple", lambda out: [out[0]]),
])
def test_each_selector_form_leaves_the_other_head_prunable(form, selector):
    result = graphprune.prune(TwoHeads(form), X, ratio=0.5, outputs=selector)
    assert result.report.exact
    assert result.compact.a.out_channels == 4  # in the contract: every channel kept
    assert result.compact.b2.out_channels == 3  # only the dropped head's output: pruned
    b = "output['b']" if form == "dict" else "output[1][0]"
    assert result.report.reduced_outputs == {b: (6, 3)}
    assert not any("b2" in g.producers for g in result.plan.groups if g.prunable == 0)


def test_every_output_is_the_contract_by_default_and_with_all():
    for outputs in (None, "all", ["a", "b"], [("a",), ("b",)]):
        result = graphprune.prune(TwoHeads(), X, ratio=0.5, outputs=outputs)
        assert result.compact.b2.out_channels == 6 and result.compact.a.out_channels == 4
        assert result.report.reduced_outputs == {}
        assert result.report.pinned["reaches the model output"] == 10


def test_a_selector_naming_no_output_is_refused_with_the_outputs_listed():
    with pytest.raises(ConfigError, match=r"output\['c'\].*output\['a'\], output\['b'\]"):
        graphprune.prune(TwoHeads(), X, outputs="c")
    with pytest.raises(ConfigError, match="picked no output"):
        graphprune.prune(TwoHeads(), X, outputs=lambda out: [])
    with pytest.raises(ConfigError, match="only pick"):
        graphprune.prune(TwoHeads(), X, outputs=lambda out: out["a"] + 1)


def yolo(config):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = tasks.SegmentationModel if "-seg" in config else tasks.DetectionModel
        return cls(config, verbose=False).eval()


@pytest.mark.parametrize("config", ["yolov8n.yaml", "yolo11n.yaml", "yolov8n-seg.yaml"])
def test_yolo_default_contract_prunes_as_far_as_predictions_only(config):
    x = torch.randn(1, 3, 64, 64)
    model = yolo(config)
    by_default = graphprune.prune(model, x, ratio=0.5)
    everything = graphprune.prune(model, x, ratio=0.5, outputs="all")
    model.model[-1].export = True  # ultralytics' export mode: the head returns only what is deployed
    predictions = graphprune.prune(model, x, ratio=0.5)

    def kept(result):
        return result.report.params_after / result.report.params_before

    assert by_default.report.exact
    assert kept(by_default) <= kept(predictions) + 0.005 < kept(everything)
    assert any("feats" in where for where in by_default.report.reduced_outputs)
    pinned = sum(by_default.report.pinned.values())
    assert pinned < sum(everything.report.pinned.values())


def test_yolo_onnx_file_has_ultralytics_inputs_and_outputs(tmp_path, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("ultralytics")
    from graphprune.cli import main

    path = tmp_path / "seg.onnx"
    assert main(["prune", "yolov8n-seg.yaml", "--input-shape", "1,3,64,64", "-o", str(path), "--no-latency",
                 "--json"]) == 0
    capsys.readouterr()
    session = onnxruntime.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["output0", "output1"]
    boxes, proto = session.run(None, {"images": torch.rand(1, 3, 64, 64).numpy()})
    assert boxes.shape == (1, 4 + 80 + 32, 84) and proto.shape == (1, 32, 16, 16)  # ultralytics' layout
