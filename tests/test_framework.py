"""Pruned models stay in their framework: the user's class, its methods and
attributes, training-mode behaviour (auxiliary heads, detector training
outputs and loss), checked against the masked model in both modes."""

import os
import warnings

import pytest
import torch
import torchvision
from helpers import calibrate

import graphprune


def assert_users_model(result, model):
    for pruned in (result.compact, result.masked):
        assert type(pruned) is type(model)
        assert [n for n, _ in pruned.named_modules()] == [n for n, _ in model.named_modules()]
        assert list(pruned.state_dict()) == list(model.state_dict())
    assert "" not in result.report.replaced
    check = result.report.verification
    assert result.report.exact and check.train_max_rel_error is not None and check.train_max_rel_error <= 1e-4


def test_inception_auxiliary_head_is_pruned_with_the_stream_it_reads():
    # At 299 px the auxiliary head runs in training mode; it reads Mixed_6e, which is pruned.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torchvision.models.inception_v3(num_classes=10, init_weights=True)
    model = calibrate(model, torch.randn(2, 3, 299, 299))
    result = graphprune.prune(model, torch.randn(1, 3, 299, 299), ratio=0.5)
    assert result.state.train_graph is not None  # analysed in both modes
    assert_users_model(result, model)
    aux = result.compact.AuxLogits.conv0.conv
    assert aux.in_channels == result.compact.Mixed_6e.branch1x1.conv.out_channels + sum(
        result.compact.Mixed_6e.get_submodule(b).conv.out_channels
        for b in ("branch7x7_3", "branch7x7dbl_5", "branch_pool")) < 768
    compact = result.compact.train()
    with torch.no_grad():
        out = compact(torch.randn(2, 3, 299, 299))
    assert out.logits.shape == out.aux_logits.shape == (2, 10)


def test_timm_model_keeps_its_methods_and_config():
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    result = graphprune.prune(model, x, ratio=0.5)
    assert_users_model(result, model)
    compact = result.compact
    assert compact.default_cfg == model.default_cfg and compact.num_classes == 10
    with torch.no_grad():
        features = compact.forward_features(x)
        assert compact.forward_head(features).shape == (1, 10)
    compact.reset_classifier(5)
    with torch.no_grad():
        assert compact(x).shape == (1, 5)


def yolo(config: str):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    tasks = pytest.importorskip("ultralytics.nn.tasks")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = tasks.SegmentationModel if "-seg" in config else tasks.DetectionModel
        return cls(config, nc=3, verbose=False).eval()


def synthetic_batch(segment: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    batch = {
        "img": torch.rand(2, 3, 64, 64, generator=g),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0], [1.0]]),
        "bboxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]]),
    }
    if segment:
        batch["masks"] = (torch.rand(2, 16, 16, generator=g) > 0.5).float()
    return batch


@pytest.mark.parametrize("config", ["yolov8n.yaml", "yolo11n.yaml", "yolov8n-seg.yaml"])
def test_yolo_compact_model_trains_in_ultralytics_terms(config):
    from ultralytics.cfg import get_cfg

    model = yolo(config)
    result = graphprune.prune(model, torch.randn(1, 3, 64, 64), ratio=0.5)
    assert_users_model(result, model)
    assert all(type(result.compact.get_submodule(p)).__name__ == type(model.get_submodule(p)).__name__
               for p in result.report.replaced)
    compact = result.compact.train()
    with torch.no_grad():
        preds = compact(torch.randn(2, 3, 64, 64))
    assert len(preds["feats"]) == 3 and all(f.shape[0] == 2 for f in preds["feats"])
    compact.args = get_cfg()  # what ultralytics' trainer sets before computing the loss
    loss, items = compact.loss(synthetic_batch("-seg" in config))
    assert torch.isfinite(loss).all() and loss.sum() > 0
    loss.sum().backward()
    assert compact.model[0].conv.weight.grad is not None
