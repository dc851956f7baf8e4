"""Building blocks: YOLO's, by both frontends, with exact kept indices; stochastic depth as one call."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import graphprune


def set_filter_norms(conv: nn.Conv2d, norms: list[float]) -> None:
    with torch.no_grad():
        w = torch.ones_like(conv.weight) / conv.weight[0].numel()
        conv.weight.copy_(w * torch.tensor(norms, dtype=w.dtype).view(-1, 1, 1, 1))


class ConvBN(nn.Module):
    def __init__(self, cin, cout, k=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.silu(self.bn(self.conv(x)))


class C2fLike(nn.Module):
    """cv1 -> chunk(2) -> bottleneck on the second half (residual) -> cat of all -> cv2."""

    def __init__(self):
        super().__init__()
        self.cv1 = ConvBN(3, 8)
        self.m1 = ConvBN(4, 4, 3)
        self.m2 = ConvBN(4, 4, 3)
        self.cv2 = ConvBN(12, 4)
        set_filter_norms(self.cv1.conv, [9, 1, 8, 1, 7, 1, 1, 6])  # keeps 0, 2, 4, 7
        set_filter_norms(self.m1.conv, [5, 1, 4, 2])
        set_filter_norms(self.m2.conv, [1, 9, 2, 3])  # keeps 1, 3 of the second half

    def forward(self, x):
        y0, y1 = self.cv1(x).chunk(2, 1)
        m = y1 + self.m2(self.m1(y1))
        return self.cv2(torch.cat([y0, y1, m], 1))


class SPPFLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.cv1 = ConvBN(3, 8)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv2 = ConvBN(32, 4)
        set_filter_norms(self.cv1.conv, [1, 8, 2, 9, 7, 3, 6, 1])  # keeps 1, 3, 4, 6

    def forward(self, x):
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_c2f_block_keeps_the_union_of_the_half_and_its_bottleneck(frontend):
    # a block of a model, as in YOLO: its chunk into unequal halves is rebuilt, the model stays the user's
    x = torch.randn(1, 3, 8, 8)
    model = nn.Sequential(C2fLike())
    result = graphprune.prune(model, x, ratio=0.5, frontend=frontend)
    assert result.report.frontend == frontend
    # second half: cv1 keeps positions 0, 3 (channels 4, 7); m2 keeps 1, 3 -> union 0, 1, 3
    assert result.plan.kept_indices("0.cv1.conv.weight", 0).tolist() == [0, 2, 4, 5, 7]
    assert result.plan.kept_indices("0.m2.conv.weight", 0).tolist() == [0, 1, 3]
    assert result.plan.kept_indices("0.m1.conv.weight", 0).tolist() == [0, 2]
    assert result.plan.kept_indices("0.cv2.conv.weight", 1).tolist() == [0, 2, 4, 5, 7, 8, 9, 11]
    assert result.report.exact
    assert type(result.compact) is nn.Sequential and type(result.compact[0]).__name__ == "C2fLike"
    assert list(result.report.replaced) == ["0"] and "split" in result.report.replaced["0"]


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_sppf_block_aligns_every_pooled_copy(frontend):
    x = torch.randn(1, 3, 8, 8)
    result = graphprune.prune(SPPFLike(), x, ratio=0.5, frontend=frontend)
    kept = [1, 3, 4, 6]
    assert result.plan.kept_indices("cv1.conv.weight", 0).tolist() == kept
    assert result.plan.kept_indices("cv2.conv.weight", 1).tolist() == [k + 8 * i for i in range(4) for k in kept]
    assert result.report.exact


def test_frontends_agree_on_a_torchvision_model():
    import torchvision

    model = torchvision.models.mobilenet_v3_small(num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    by_fx = graphprune.prune(model, x, frontend="fx", mode="group")
    by_export = graphprune.prune(model, x, frontend="export", mode="group")
    assert by_export.report.frontend == "export"
    assert by_fx.report.params_after == by_export.report.params_after
    assert by_fx.report.flops_after == by_export.report.flops_after
    assert by_export.report.exact


class ResidualWithStochasticDepth(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        self.stem = ConvBN(3, 8)
        self.branch = nn.Sequential(ConvBN(8, 16), nn.Conv2d(16, 8, 1), nn.BatchNorm2d(8))
        self.drop = torchvision.ops.StochasticDepth(0.5, mode)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        return self.head(x + self.drop(self.branch(x)))


@pytest.mark.parametrize("mode", ["row", "batch"])
def test_stochastic_depth_is_one_call_whose_training_mode_draws_agree(mode):
    torch.manual_seed(0)
    model = ResidualWithStochasticDepth(mode).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    result = graphprune.prune(model, torch.randn(2, 3, 16, 16), ratio=0.5)
    assert result.state.train_graph is None  # the same graph in both modes: traced and analysed once
    assert any(n.op == "call_module" and n.target == "drop" for n in result.compact_graph.graph.nodes)
    assert result.compact.branch[0].conv.out_channels == 8
    check = result.report.verification
    assert result.report.exact and check.train_max_rel_error is not None and check.train_max_rel_error <= 1e-4
    # in training mode, the compact model drops the same samples as the masked one
    masked, compact = result.masked.train(), result.compact.train()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        torch.manual_seed(3)
        expected = masked(x)
        torch.manual_seed(3)
        got = compact(x)
    assert (expected - got).abs().max() <= 1e-4 * expected.abs().max()


class WideC2f(nn.Module):
    """C2f's pattern at 32 channels: cv1's output split in halves, the second half through a bottleneck."""

    def __init__(self):
        super().__init__()
        self.cv1 = ConvBN(3, 32)
        self.m = ConvBN(16, 16, 3)
        self.cv2 = ConvBN(48, 8)
        # the 16 strongest filters: 11 in the first half, 5 in the second
        set_filter_norms(self.cv1.conv, [9] * 11 + [1] * 5 + [9] * 5 + [1] * 11)

    def forward(self, x):
        y0, y1 = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat([y0, y1, y1 + self.m(y1)], 1))


def test_round_to_rounds_each_piece_of_a_split_group():
    # ONNX Runtime runs a conv fast when its input channels are a multiple of the block: each piece is an input
    model = WideC2f().eval()
    result = graphprune.prune(model, torch.randn(1, 3, 16, 16), ratio=0.5, mode="group", round_to=8)
    group = next(g for g in result.plan.groups if g.name == "cv1.conv")
    assert sorted(p.numel() for p in group.parts) == [16, 16]
    kept = result.plan.kept_indices("cv1.conv.weight")
    halves = [int((kept < 16).sum()), int((kept >= 16).sum())]
    assert halves == [8, 8]  # not 11 and 5: the total alone a multiple of 8
    assert result.compact.m.conv.in_channels == 8 and result.report.exact
    unrounded = graphprune.prune(model, torch.randn(1, 3, 16, 16), ratio=0.5, mode="group")
    kept = unrounded.plan.kept_indices("cv1.conv.weight")
    assert [int((kept < 16).sum()), int((kept >= 16).sum())] == [11, 5]  # round_to=1: the scores decide alone
