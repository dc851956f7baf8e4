"""Detectors and segmentation models: pinned heads, the user's class kept, ONNX.

YOLO models are built from ultralytics' yaml configs (random weights, no
download); torchvision's segmentation models include the aux classifier.

Each model is built once and each setting compiled once (the module fixture
``detector``), for every test below that reads it. The default tier compiles
every model but yolov3.yaml in both settings and exports one compile of each
model family to ONNX; the slow tier (``-m slow``) compiles yolov3.yaml, the
largest (about a minute), and exports every other compile.
"""

import os
import warnings

import pytest
import torch
import torchvision
from helpers import calibrate
from torch.utils._pytree import tree_leaves

import graphprune
from graphprune.contract import pick

os.environ.setdefault("YOLO_OFFLINE", "1")
tasks = pytest.importorskip("ultralytics.nn.tasks")

YOLO = ["yolov3.yaml", "yolov3-tiny.yaml", "yolov5n.yaml", "yolov8n.yaml", "yolo11n.yaml"]
SEGMENTATION = ["fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large"]
SETTINGS = [("per_layer", "l1", 0.5), ("group", "l2", 0.3)]

# The exports in the default tier: a YOLO with the v3 head,
# one with C3k2/C2PSA attention and the v8 box head (DFL), and a torchvision
# segmenter with its aux classifier; both settings among them.
DEFAULT_EXPORTS = {("yolov3-tiny.yaml", "group"), ("yolo11n.yaml", "per_layer"), ("fcn_resnet50", "per_layer")}
SLOW = pytest.mark.slow


class Detector:
    """A model built once; ``compiled(mode)`` prunes it once per setting."""

    def __init__(self, name: str):
        self.name = name
        self.model = build(name)
        self.x = torch.randn(1, 3, 64, 64)
        self._compiled = {}

    def compiled(self, mode: str):
        if mode not in self._compiled:
            _, criterion, ratio = next(s for s in SETTINGS if s[0] == mode)
            self._compiled[mode] = graphprune.prune(self.model, self.x, ratio=ratio, criterion=criterion, mode=mode)
        return self._compiled[mode]


def build(name: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name.endswith(".yaml"):
            model = tasks.DetectionModel(name, verbose=False)
        else:
            aux = {} if name.startswith("lraspp") else {"aux_loss": True}
            model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21, **aux)
    return calibrate(model, torch.randn(2, 3, 64, 64))


@pytest.fixture(scope="module")
def detector(request) -> Detector:
    """The model named by indirect parametrisation, with its compiles."""
    torch.manual_seed(0)  # the same weights whichever test builds it
    return Detector(request.param)


def shapes(out) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


def cases(slow):
    """(detector, mode) parameters, each marked slow where ``slow(name, mode)``."""
    return [
        pytest.param(name, mode, id=f"{name}-{mode}", marks=[SLOW] if slow(name, mode) else [])
        for name in YOLO + SEGMENTATION for mode, _, _ in SETTINGS
    ]


@pytest.mark.parametrize("detector, mode", cases(lambda name, mode: name == "yolov3.yaml"),
                         indirect=["detector"], scope="module")
def test_detector_or_segmenter_compiles_exact_and_smaller(detector, mode):
    model, x, result = detector.model, detector.x, detector.compiled(mode)
    report = result.report
    assert report.frontend == "fx"  # graphprune's tracer follows ultralytics' forward (see graphprune.tracing)
    assert type(result.compact) is type(model) and list(result.compact.state_dict()) == list(model.state_dict())
    assert report.exact and report.max_rel_error <= 1e-4
    assert report.params_after < report.params_before
    assert report.flops_after < report.flops_before
    with torch.no_grad():
        dense_out, compact_out = model(x), result.compact(x)
    # the contract (ultralytics: the predictions) keeps every box, class, DFL and mask channel;
    # the compact model still returns every output, the others (the neck's feature maps) maybe narrower
    paths = result.state.contract.eval
    assert shapes(pick(compact_out, paths)) == shapes(pick(dense_out, paths))
    assert len(shapes(compact_out)) == len(shapes(dense_out))


@pytest.mark.parametrize("detector, mode", cases(lambda name, mode: (name, mode) not in DEFAULT_EXPORTS),
                         indirect=["detector"], scope="module")
def test_detector_or_segmenter_exports(detector, mode, tmp_path):
    result = detector.compiled(mode)
    exported = graphprune.export_onnx(result.compact, detector.x, tmp_path / "compact.onnx")
    assert exported.max_rel_error <= 1e-4


@pytest.mark.parametrize("detector", ["yolov8n.yaml", "yolo11n.yaml"], indirect=True)
def test_yolo_heads_are_pinned_and_the_backbone_is_pruned(detector):
    model = detector.model
    result = detector.compiled("per_layer")  # ratio 0.5, L1, as prune's defaults
    detect = len(model.model) - 1
    # the last conv of every box (cv2, into DFL's softmax) and class (cv3) branch, at every scale
    heads = [f"model.{detect}.{branch}.{scale}.2" for branch in ("cv2", "cv3") for scale in range(3)]
    for name in heads:
        group = result.plan.group_of(name)
        assert group.prunable == 0
        assert any("model output" in r or "softmax" in r for r in group.reasons)
    backbone = result.plan.group_of("model.1.conv")
    kept = int(result.plan.class_kept[backbone.classes].sum())
    assert kept == backbone.size // 2
