"""The paper's ResNet-50 facts: union keeps the residual streams wide and is
lossless; intersection (AND) is not."""

import torch
import torchvision
from helpers import calibrate

import graphprune

STAGES = ["layer1.0.downsample.0", "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
FULL = [256, 512, 1024, 2048]


def stream_widths(result) -> list[int]:
    widths = []
    for stage in STAGES:
        group = result.plan.group_of(stage)
        widths.append(int(result.plan.class_kept[group.classes].sum()))
    return widths


def test_resnet50_union_keeps_wide_streams_and_intersection_breaks_the_model():
    model = calibrate(torchvision.models.resnet50(num_classes=10), torch.randn(4, 3, 64, 64))
    x = torch.randn(1, 3, 64, 64)

    union = graphprune.prune(model, x, ratio=0.5, coupling="union")
    widths = stream_widths(union)
    # every block's last conv writes the stream: the union of their halves is far wider than half
    assert all(full // 2 < w <= full for w, full in zip(widths, FULL)), widths
    assert union.report.exact
    group = union.plan.group_of("layer3.0.downsample.0")
    assert "layer3.5.conv3" in group.producers and "layer3.0.conv3" in group.producers

    inter = graphprune.prune(model, x, ratio=0.5, coupling="intersection", verify="report")
    narrow = stream_widths(inter)
    assert all(w < full // 2 for w, full in zip(narrow, FULL)), narrow
    assert inter.report.exact is False
    assert inter.report.max_rel_error > 1e-2
    assert any("NOT equal" in n and "intersection" in n for n in inter.report.notes)
    print("stream widths, union:", widths, "intersection:", narrow)
