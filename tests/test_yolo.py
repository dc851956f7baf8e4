"""Detectors and segmentation models: pinned heads, the user's class kept, ONNX.

YOLO models are built from ultralytics' yaml configs (random weights, no
download); torchvision's segmentation models include the aux classifier.
"""

import os
import warnings

import pytest
import torch
import torchvision
from helpers import calibrate
from torch.utils._pytree import tree_leaves

import graphprune

os.environ.setdefault("YOLO_OFFLINE", "1")
tasks = pytest.importorskip("ultralytics.nn.tasks")

YOLO = ["yolov3.yaml", "yolov3-tiny.yaml", "yolov5n.yaml", "yolov8n.yaml", "yolo11n.yaml"]
SEGMENTATION = ["fcn_resnet50", "deeplabv3_resnet50", "lraspp_mobilenet_v3_large"]
SETTINGS = [("per_layer", "l1", 0.5), ("group", "l2", 0.3)]


def build(name: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name.endswith(".yaml"):
            model = tasks.DetectionModel(name, verbose=False)
        else:
            aux = {} if name.startswith("lraspp") else {"aux_loss": True}
            model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21, **aux)
    return calibrate(model, torch.randn(2, 3, 64, 64))


def shapes(out) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tree_leaves(out) if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize("mode, criterion, ratio", SETTINGS, ids=[s[0] for s in SETTINGS])
@pytest.mark.parametrize("name", YOLO + SEGMENTATION)
def test_detector_or_segmenter_compiles_exact_smaller_and_exports(name, mode, criterion, ratio, tmp_path):
    model = build(name)
    x = torch.randn(1, 3, 64, 64)
    result = graphprune.prune(model, x, ratio=ratio, criterion=criterion, mode=mode)
    report = result.report
    assert report.frontend == "fx"  # graphprune's tracer follows ultralytics' forward (see graphprune.tracing)
    assert type(result.compact) is type(model) and list(result.compact.state_dict()) == list(model.state_dict())
    assert report.exact and report.max_rel_error <= 1e-4
    assert report.params_after < report.params_before
    assert report.flops_after < report.flops_before
    with torch.no_grad():
        dense_out, compact_out = model(x), result.compact(x)
    assert shapes(compact_out) == shapes(dense_out)  # box, class, DFL and mask channels all kept
    exported = graphprune.export_onnx(result.compact, x, tmp_path / "compact.onnx")
    assert exported.max_rel_error <= 1e-4


@pytest.mark.parametrize("name", ["yolov8n.yaml", "yolo11n.yaml"])
def test_yolo_heads_are_pinned_and_the_backbone_is_pruned(name):
    model = build(name)
    result = graphprune.prune(model, torch.randn(1, 3, 64, 64), ratio=0.5)
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
