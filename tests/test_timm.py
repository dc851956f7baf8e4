"""timm's layer library, each kind in a small model, and timm's CNN families against their twins."""

import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

import graphprune
from graphprune.norms import CompactStandardizedConv2d

timm = pytest.importorskip("timm")
layers = pytest.importorskip("timm.layers")


def set_filter_norms(conv: nn.Module, norms: list[float]) -> None:
    with torch.no_grad():
        w = torch.ones_like(conv.weight)
        w *= torch.tensor(norms).view(-1, *([1] * (w.ndim - 1))) / w[0].numel()
        conv.weight.copy_(w)


NORMS = [9, 1, 8, 1, 7, 1, 6, 1]  # keeps 0, 2, 4, 6 at ratio 0.5


class Block(nn.Module):
    """conv -> ``layer`` -> conv, the middle layer one of timm's kinds."""

    def __init__(self, layer: nn.Module, conv: type = nn.Conv2d):
        super().__init__()
        self.conv = conv(3, 8, 3, padding=1) if conv is nn.Conv2d else conv(3, 8, 3)
        self.layer = layer
        self.head = nn.Conv2d(8, 2, 1)
        set_filter_norms(self.conv, NORMS)

    def forward(self, x):
        return self.head(self.layer(self.conv(x)))


X = torch.randn(2, 3, 8, 8)


def se(module: nn.Module) -> nn.Module:
    """The gate writes the gated channels too (a product couples them): the same norms, one choice."""
    set_filter_norms(module.fc2, NORMS)
    return module


def calibrated(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(0.1, 0.3)
                m.running_mean.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.mark.parametrize("name, layer", [
    ("BatchNormAct2d", lambda: layers.BatchNormAct2d(8, act_layer=nn.SiLU)),
    ("BatchNormAct2d with drop", lambda: layers.BatchNormAct2d(8, drop_layer=nn.Dropout)),
    ("SqueezeExcite", lambda: nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), se(layers.SqueezeExcite(8, rd_channels=4)))),
    ("create_act_layer", lambda: nn.Sequential(nn.BatchNorm2d(8), layers.create_act_layer("hard_swish"))),
    ("DropPath", lambda: nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), layers.DropPath(0.2))),
])
def test_timm_layer_prunes_exactly_with_the_expected_kept_indices(name, layer):
    result = graphprune.prune(calibrated(Block(layer())), X, ratio=0.5)
    assert result.plan.kept_indices("conv.weight", 0).tolist() == [0, 2, 4, 6], name
    assert result.compact.head.in_channels == 4
    check = result.report.verification
    assert result.report.exact and check.train_max_rel_error is not None and check.train_max_rel_error <= 1e-4
    bn = next((m for m in result.compact.layer.modules() if isinstance(m, nn.BatchNorm2d)), None)
    assert bn is None or bn.num_features == 4


def test_conv2d_same_padding_is_a_functional_conv_with_its_own_weight():
    model = calibrated(Block(nn.Sequential(nn.BatchNorm2d(8), nn.ReLU()), conv=layers.Conv2dSame))
    result = graphprune.prune(model, X, ratio=0.5)
    assert result.plan.kept_indices("conv.weight", 0).tolist() == [0, 2, 4, 6]
    assert type(result.compact.conv) is layers.Conv2dSame and result.compact.conv.out_channels == 4
    assert result.report.exact


@pytest.mark.parametrize("cls", ["StdConv2d", "ScaledStdConv2d", "ScaledStdConv2dSame"])
def test_weight_standardised_convs_count_the_dropped_inputs_in_each_filters_statistics(cls):
    conv = getattr(layers, cls)(8, 8, 3)
    if hasattr(conv, "gain"):
        with torch.no_grad():
            conv.gain.uniform_(0.5, 2.0)
    model = calibrated(Block(nn.Sequential(nn.BatchNorm2d(8), nn.ReLU(), conv)))
    result = graphprune.prune(model, X, ratio=0.5)
    assert result.plan.kept_indices("conv.weight", 0).tolist() == [0, 2, 4, 6]
    std = result.compact.layer[2]
    assert isinstance(std, CompactStandardizedConv2d) and isinstance(std, nn.Conv2d)
    assert std.total == 8 * 3 * 3 and std.weight.shape == (4, 4, 3, 3) and std.in_channels == 4
    assert not hasattr(conv, "gain") or std.gain.shape == (4, 1, 1, 1)
    assert "layer.2" in result.report.replaced
    check = result.report.verification
    assert result.report.exact and check.train_max_rel_error is not None and check.train_max_rel_error <= 1e-4
    # the masked model zeroes the dropped input columns, which count in the statistics
    masked_weight = result.masked.layer[2].weight
    assert bool((masked_weight[:, [1, 3, 5, 7]] == 0).all()) and bool((masked_weight[:, [0, 2, 4, 6]] != 0).any())


@pytest.mark.parametrize("name, layer, reason", [
    ("EcaModule", lambda: layers.EcaModule(8, kernel_size=3), "across"),
])
def test_timm_layers_that_mix_channels_are_pinned_with_a_reason(name, layer, reason):
    result = graphprune.prune(calibrated(Block(layer())), X, ratio=0.5)
    group = result.plan.group_of("conv")
    assert group.prunable == 0 and any(reason in r for r in group.reasons), group.reasons
    assert result.report.exact


def kept(result) -> float:
    return result.report.params_after / result.report.params_before


@pytest.mark.parametrize("name, twin", [
    ("efficientnet_b0", "efficientnet_b0"), ("mobilenetv2_100", "mobilenet_v2"),
    ("regnety_008", "regnet_y_800mf"), ("cspresnet50", "resnet50"), ("nf_resnet26", "resnet50"),
])
def test_timm_models_prune_like_their_torchvision_twins(name, twin):
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = timm.create_model(name, pretrained=False).eval()
        theirs = torchvision.models.get_model(twin).eval()
    result = graphprune.prune(ours, x, ratio=0.5, criterion="l2", mode="group")
    reference = graphprune.prune(theirs, x, ratio=0.5, criterion="l2", mode="group", verify=False)
    assert result.report.exact and type(result.compact) is type(ours)
    assert abs(kept(result) - kept(reference)) <= 0.10, (kept(result), kept(reference))
