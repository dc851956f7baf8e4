"""Norms over channels stay exact after pruning: the compact LayerNorm counts
the dropped zeros in its statistics (graphprune/norms.py)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.convnext import LayerNorm2d

import graphprune
from graphprune.norms import CompactLayerNorm, counted_layer_norm


@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_counted_layer_norm_equals_layer_norm_over_zero_padded_channels(offset):
    g = torch.Generator().manual_seed(3)
    total, keep = 12, torch.tensor([0, 2, 3, 7, 11])
    x = torch.randn(4, 5, len(keep), generator=g, dtype=torch.float64) + offset  # a large mean: no cancellation
    weight, bias = torch.randn(total, generator=g, dtype=torch.float64), torch.randn(total, generator=g,
                                                                                       dtype=torch.float64)
    padded = torch.zeros(4, 5, total, dtype=torch.float64)
    padded[..., keep] = x
    expected = F.layer_norm(padded, (total,), weight, bias, 1e-6)[..., keep]
    got = counted_layer_norm(x, total, weight[keep], bias[keep], 1e-6)
    assert torch.allclose(got, expected, rtol=0, atol=1e-9 * max(1.0, offset))
    # and in float32 the two-pass form keeps the error at round-off even with the large mean
    got32 = counted_layer_norm(x.float(), total, weight[keep].float(), bias[keep].float(), 1e-6)
    assert (got32.double() - expected).abs().max() <= 1e-3


class Block(nn.Module):
    """A ConvNeXt-style block: depthwise conv, LayerNorm over channels-last, MLP, residual."""

    def __init__(self, c: int, functional: bool):
        super().__init__()
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = LayerNorm2d(c) if functional else nn.LayerNorm(c)
        self.functional = functional
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)

    def forward(self, x):
        y = self.dw(x)
        y = self.norm(y).permute(0, 2, 3, 1) if self.functional else self.norm(y.permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        return x + y


class Net(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.stem_norm = LayerNorm2d(16)
        self.blocks = nn.Sequential(Block(16, functional), Block(16, functional))
        self.head_norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.blocks(self.stem_norm(self.stem(x)))
        return self.fc(self.head_norm(x.mean((2, 3))))


def randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial gamma and beta: an identity affine would hide a slicing bug."""
    torch.manual_seed(5)
    for m in model.modules():
        if isinstance(m, nn.LayerNorm):
            nn.init.normal_(m.weight, 1.0, 0.5)
            nn.init.normal_(m.bias, 0.0, 0.5)
    return model.eval()


@pytest.mark.parametrize("functional", [False, True], ids=["nn.LayerNorm", "F.layer_norm"])
def test_layer_norm_channels_are_pruned_exactly(functional):
    model = randomise_norms(Net(functional))
    x = torch.randn(2, 3, 12, 12)
    result = graphprune.prune(model, x, ratio=0.5, mode="group")
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    # the residual stream (16 channels, through every LayerNorm) lost its channels too
    kept = result.compact.stem.out_channels
    assert kept < 16 and result.compact.fc.in_features == kept
    expected_params = sum(p.numel() for p in result.compact.parameters())
    assert report.params_after == expected_params < report.params_before
    if functional:  # a LayerNorm2d calls F.layer_norm in its forward: rebuilt with the counted one
        assert "blocks.0.norm" in report.replaced and "stem_norm" in report.replaced
    else:
        norm = result.compact.blocks[0].norm
        assert isinstance(norm, CompactLayerNorm) and norm.total == 16 and norm.normalized_shape == (kept,)
        assert norm.weight.shape == (kept,) and "blocks.0.norm" in report.replaced
    assert isinstance(result.compact.head_norm, CompactLayerNorm)
    assert list(result.compact.state_dict()) == list(model.state_dict())
    fresh = torch.randn(3, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(result.compact(fresh), result.masked(fresh), atol=1e-5)


def test_layer_norm_without_affine_keeps_the_channels_it_cannot_zero():
    """Without gamma, a dropped channel's output is -mean/std, not zero: what reads it keeps it."""

    class NoAffine(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.norm, self.fc2 = nn.Linear(6, 16), nn.LayerNorm(16, elementwise_affine=False), \
                nn.Linear(16, 4)

        def forward(self, x):
            return self.fc2(self.norm(self.fc1(x)))

    result = graphprune.prune(NoAffine().eval(), torch.randn(3, 6), ratio=0.5, mode="group")
    assert result.report.exact
    assert result.compact.fc1.out_features == 16 and result.compact.fc2.in_features == 16


def test_layer_norm_over_several_dims_is_pinned():
    class Spatial(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.fc = nn.Conv2d(3, 8, 1), nn.LayerNorm([8, 4, 4]), nn.Linear(8, 2)

        def forward(self, x):
            return self.fc(self.norm(self.conv(x)).mean((2, 3)))

    result = graphprune.prune(Spatial().eval(), torch.randn(2, 3, 4, 4), ratio=0.5, mode="group")
    assert result.report.exact and result.compact.conv.out_channels == 8


@pytest.mark.parametrize("zoo", ["convnext_tiny"], indirect=True)
def test_convnext_group_mode_prunes_through_its_layer_norms(zoo):
    result = zoo.compiled("group")  # the compile test_zoo checks for exactness, shared
    report = result.report
    assert report.exact and report.prunable_fraction >= 0.9
    # the residual stream is pruned through every LayerNorm: ratio 0.5 leaves about a quarter
    assert 0.2 < report.params_after / report.params_before < 0.3
    norm = result.compact.features[1][0].block[2]
    assert isinstance(norm, CompactLayerNorm) and norm.total == 96 and norm.normalized_shape[0] < 96
