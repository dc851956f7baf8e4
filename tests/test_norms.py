"""Norms over channels stay exact after pruning: the compact LayerNorm counts
the dropped zeros in its statistics (graphprune/norms.py)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.convnext import LayerNorm2d

import graphprune
from graphprune.norms import CompactLayerNorm, CompactRMSNorm, counted_layer_norm


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


def randomise(model: nn.Module) -> nn.Module:
    """Non-trivial gamma and beta: an identity affine would hide a slicing bug."""
    torch.manual_seed(5)
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)):
            nn.init.normal_(m.weight, 1.0, 0.5)
            if getattr(m, "bias", None) is not None:
                nn.init.normal_(m.bias, 0.0, 0.5)
    return model.eval()


@pytest.mark.parametrize("functional", [False, True], ids=["nn.LayerNorm", "F.layer_norm"])
def test_layer_norm_channels_are_pruned_exactly(functional):
    model = randomise(Net(functional))
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


def test_counted_norms_and_reductions_equal_the_originals_over_zero_padded_channels():
    from graphprune.norms import counted_group_norm, counted_mean, counted_rms_norm, counted_var

    g = torch.Generator().manual_seed(4)
    keep = torch.tensor([0, 1, 5, 6, 7, 8])  # of 12 in 4 groups of 3: they keep 2, 1, 3 and 0 channels
    x = torch.randn(2, len(keep), 5, 5, generator=g, dtype=torch.float64) + 3
    padded = torch.zeros(2, 12, 5, 5, dtype=torch.float64)
    padded[:, keep] = x
    w, b = torch.randn(12, generator=g, dtype=torch.float64), torch.randn(12, generator=g, dtype=torch.float64)
    pairs = [
        (counted_group_norm(x, (0, 0, 1, 2, 2, 2), 3, w[keep], b[keep], 1e-5), F.group_norm(padded, 4, w, b)[:, keep]),
        (counted_rms_norm(x.transpose(1, 3), 12, w[keep], 1e-6), F.rms_norm(padded.transpose(1, 3), (12,), w, 1e-6)[..., keep]),
        (counted_mean(x, 1, True, 12), padded.mean(1, keepdim=True)),
        (counted_var(x, (1, 2), 1, False, 60), padded.var((1, 2))),
        (counted_var(x, 1, 0, True, 12, sqrt=True), padded.std(1, keepdim=True, correction=0)),
    ]
    for got, expected in pairs:
        assert torch.allclose(got, expected, rtol=0, atol=1e-10)


class GroupNormNet(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.conv, self.norm, self.functional = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), functional
        self.out = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        y = F.group_norm(y, 4, self.norm.weight, self.norm.bias) if self.functional else self.norm(y)
        return self.out(F.relu(y))


@pytest.mark.parametrize("functional", [False, True], ids=["nn.GroupNorm", "F.group_norm"])
def test_group_norm_groups_lose_different_counts_and_one_loses_all(functional):
    model = randomise(GroupNormNet(functional))
    with torch.no_grad():  # L1 drops the 8 smallest filters: 1, 2, 1 and all 4 of the four groups
        scale = torch.ones(16)
        scale[[0, 4, 5, 8, 12, 13, 14, 15]] = 0.01
        model.conv.weight.mul_(scale[:, None, None, None])
    result = graphprune.prune(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    assert result.report.exact and result.report.verification.train_max_rel_error <= 1e-4
    assert result.compact.conv.out_channels == 8 and result.compact.out.in_channels == 8
    if functional:
        assert "counted_group_norm" in result.report.replaced[""]  # the model's forward calls F.group_norm
    else:
        norm = result.compact.norm
        assert norm.groups == (0, 0, 0, 1, 1, 2, 2, 2) and norm.group_size == 4 and norm.num_groups == 3
    x = torch.randn(3, 3, 8, 8) * 3 + 1
    with torch.no_grad():
        assert torch.allclose(result.compact(x), result.masked(x), atol=1e-5)


def test_rms_norm_and_reductions_over_channels_are_pruned_exactly():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 16, 3, padding=1), nn.RMSNorm(16)
            self.gamma = nn.Parameter(torch.randn(16))
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            y = y * torch.sigmoid(y.mean(1, keepdim=True))  # a spatial gate from the channel mean
            y = y / (y.std(dim=1, keepdim=True, correction=0) + 1.0)
            t = self.norm(y.permute(0, 2, 3, 1))
            t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * self.gamma  # a hand-written RMSNorm
            return self.fc(t.mean((1, 2)))

    model = randomise(Net())
    result = graphprune.prune(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    report = result.report
    assert report.exact and report.verification.train_max_rel_error <= 1e-4
    assert result.compact.conv.out_channels == 8 and result.compact.fc.in_features == 8
    assert isinstance(result.compact.norm, CompactRMSNorm) and result.compact.norm.total == 16
    # the user's forward holds mean/std over channels: rebuilt with the counted forms, and said so
    assert any("counted_mean" in why for why in report.replaced.values())
    assert any("counted_var" in why for why in report.replaced.values())
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(result.compact(x), result.masked(x), atol=1e-5)


def test_reductions_that_zeros_change_are_pinned():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 16, 1), nn.Linear(16, 4)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            y = y - y.amax(1, keepdim=True)  # a max over channels: a dropped zero may be the max
            return self.fc(y.mean((2, 3)))

    result = graphprune.prune(Net().eval(), torch.randn(2, 3, 4, 4), ratio=0.5)
    assert result.report.exact and result.compact.conv.out_channels == 16
    assert any("reduced across channels" in reason for reason in result.report.pinned)


def test_timm_convnext_v2_global_response_norm_is_pruned():
    timm = pytest.importorskip("timm")
    model = timm.create_model("convnextv2_atto", num_classes=10).eval()
    result = graphprune.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5, mode="group")
    report = result.report
    assert report.exact and report.prunable_fraction >= 0.99  # only the classifier's outputs are kept
    assert report.params_after < 0.3 * report.params_before


def test_an_exported_graphs_aten_norms_reductions_powers_and_attention_have_rules():
    """torch.export (where fx cannot trace) gives ATen ops: layer_norm,
    group_norm, mean.dim and pow prune as their fx forms do; sdpa, matmul and
    unbind have rules too (the attention module's rebuilt forward needs call
    boundaries an exported graph does not record for it: pinned for that)."""
    from helpers import AttentionNet

    for model, x in [(randomise(Net(True)), torch.randn(2, 3, 12, 12)),
                     (randomise(GroupNormNet(False)), torch.randn(2, 3, 8, 8))]:
        fx_result = graphprune.prune(model, x, ratio=0.5, mode="group", frontend="fx")
        exported = graphprune.prune(model, x, ratio=0.5, mode="group", frontend="export")
        assert exported.report.frontend == "export" and exported.report.exact, type(model).__name__
        assert exported.report.params_after == fx_result.report.params_after < exported.report.params_before
    for sdpa in (True, False):
        torch.manual_seed(0)
        exported = graphprune.prune(AttentionNet(sdpa, from_shape=False).eval(), torch.randn(2, 5, 6), ratio=0.5,
                                    frontend="export")
        assert exported.report.exact and exported.report.params_after < exported.report.params_before
        assert not any("no channel rule" in reason for reason in exported.report.pinned), exported.report.pinned
