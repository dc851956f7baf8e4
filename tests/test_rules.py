"""One small hand-built model per op rule: kept sets, shapes, exactness."""

import pytest
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.errors import VerificationError


def set_filter_norms(conv: nn.Conv2d, norms: list[float]) -> None:
    """Make filter i of ``conv`` have L1 norm proportional to norms[i]."""
    with torch.no_grad():
        w = torch.ones_like(conv.weight)
        w *= torch.tensor(norms).view(-1, *([1] * (w.ndim - 1))) / w[0].numel()
        conv.weight.copy_(w)


def top(norms: list[float], keep: int) -> set[int]:
    return set(sorted(range(len(norms)), key=lambda i: -norms[i])[:keep])


def assert_exact(result, x):
    with torch.no_grad():
        expected, got = result.masked(x), result.compact(x)
    assert expected.shape == got.shape
    assert torch.allclose(expected, got, rtol=0, atol=1e-5 * expected.abs().max().item() + 1e-7)
    assert result.report.exact


# -- residual add: union and intersection ------------------------------------

A_NORMS = [9, 8, 7, 6, 1, 1, 1, 1]  # conv_a keeps 0..3
B_NORMS = [1, 1, 9, 8, 7, 6, 1, 1]  # conv_b keeps 2..5


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv_a = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)
        set_filter_norms(self.conv_a, A_NORMS)
        set_filter_norms(self.conv_b, B_NORMS)

    def forward(self, x):
        a = F.relu(self.bn_a(self.conv_a(x)))
        b = self.bn_b(self.conv_b(a))
        return self.head(F.relu(a + b))


def test_residual_add_union_keeps_every_channel_any_writer_keeps():
    x = torch.randn(2, 3, 8, 8)
    result = graphprune.prune(Residual(), x, ratio=0.5, coupling="union")
    expected = sorted(top(A_NORMS, 4) | top(B_NORMS, 4))
    assert result.plan.kept_indices("conv_a.weight", 0).tolist() == expected
    assert result.plan.kept_indices("conv_b.weight", 0).tolist() == expected
    assert result.plan.kept_indices("head.weight", 1).tolist() == expected
    assert result.compact.conv_b.in_channels == len(expected)
    assert_exact(result, x)


def test_residual_add_intersection_is_not_lossless_and_says_so():
    x = torch.randn(2, 3, 8, 8)
    result = graphprune.prune(Residual(), x, ratio=0.5, coupling="intersection", verify="report")
    assert result.plan.kept_indices("conv_a.weight", 0).tolist() == sorted(top(A_NORMS, 4) & top(B_NORMS, 4))
    assert result.report.exact is False
    assert any("NOT equal" in note for note in result.report.notes)
    with pytest.raises(VerificationError, match="coupling='union'"):
        graphprune.prune(Residual(), x, ratio=0.5, coupling="intersection")


# -- concatenation: index alignment ------------------------------------------


class Concat(nn.Module):
    def __init__(self, add_after: bool = False):
        super().__init__()
        self.add_after = add_after
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(3, 6, 3, padding=1)
        self.conv_d = nn.Conv2d(3, 10, 1)
        self.head = nn.Conv2d(10, 2, 1)
        set_filter_norms(self.conv_a, [1, 5, 2, 6])
        set_filter_norms(self.conv_b, [9, 1, 8, 2, 3, 7])
        set_filter_norms(self.conv_d, [10 - i for i in range(10)])

    def forward(self, x):
        c = torch.cat([F.relu(self.conv_a(x)), F.relu(self.conv_b(x))], dim=1)
        if self.add_after:
            c = c + F.relu(self.conv_d(x))
        return self.head(c)


def test_concat_consumer_input_is_aligned_by_offsets():
    x = torch.randn(2, 3, 6, 6)
    result = graphprune.prune(Concat(), x, ratio=0.5)
    keep_a = top([1, 5, 2, 6], 2)
    keep_b = {4 + i for i in top([9, 1, 8, 2, 3, 7], 3)}
    assert result.plan.kept_indices("head.weight", 1).tolist() == sorted(keep_a | keep_b)
    assert result.compact.head.in_channels == 5
    assert_exact(result, x)


def test_concat_whose_parts_are_added_to_another_tensor():
    x = torch.randn(2, 3, 6, 6)
    result = graphprune.prune(Concat(add_after=True), x, ratio=0.5)
    keep_a = top([1, 5, 2, 6], 2)
    keep_b = {4 + i for i in top([9, 1, 8, 2, 3, 7], 3)}
    keep_d = top([10 - i for i in range(10)], 5)
    expected = sorted(keep_a | keep_b | keep_d)
    assert result.plan.kept_indices("conv_d.weight", 0).tolist() == expected
    assert result.plan.kept_indices("head.weight", 1).tolist() == expected
    assert_exact(result, x)


# -- split / chunk ------------------------------------------------------------


class Chunked(nn.Module):
    def __init__(self, use_split: bool):
        super().__init__()
        self.use_split = use_split
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(8, 2, 1)
        set_filter_norms(self.conv, [9, 8, 7, 1, 1, 6, 2, 3])  # keeps 0, 1, 2 | 5

    def forward(self, x):
        y = F.relu(self.conv(x))
        y1, y2 = torch.split(y, [4, 4], dim=1) if self.use_split else y.chunk(2, dim=1)
        return self.head(torch.cat([self.left(y1), F.relu(self.right(y2))], 1))


@pytest.mark.parametrize("use_split", [False, True], ids=["chunk", "split"])
def test_split_and_chunk_get_the_kept_counts_of_each_piece(use_split):
    x = torch.randn(2, 3, 5, 5)
    result = graphprune.prune(Chunked(use_split), x, ratio=0.5)
    assert result.plan.kept_indices("conv.weight", 0).tolist() == [0, 1, 2, 5]
    assert result.compact.left.in_channels == 3
    assert result.compact.right.in_channels == 1
    assert_exact(result, x)


# -- flatten into linear ------------------------------------------------------


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.relu(self.conv(x)), 1))


def test_flatten_into_linear_slices_every_spatial_position_of_a_channel():
    x = torch.randn(2, 3, 4, 4)
    result = graphprune.prune(FlattenLinear(), x, ratio=0.5)
    kept = result.plan.kept_indices("conv.weight", 0)
    features = result.plan.kept_indices("fc.weight", 1)
    assert kept.numel() == 4
    assert features.tolist() == sorted(c * 16 + p for c in kept.tolist() for p in range(16))
    assert result.compact.fc.in_features == 64
    assert_exact(result, x)


# -- channel shuffle ----------------------------------------------------------


def shuffle(x, groups: int):
    n, c, h, w = x.size()
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)


class Shuffle(nn.Module):
    def __init__(self, module: bool):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.shuffle = nn.ChannelShuffle(2) if module else None
        self.head = nn.Conv2d(12, 2, 1)
        set_filter_norms(self.a, [9, 1, 8, 1, 7, 2])  # a alone would keep 0, 2, 4
        set_filter_norms(self.b, [8, 7, 9, 2, 1, 1])  # b alone would keep 0, 1, 2

    def forward(self, x):
        y = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        y = self.shuffle(y) if self.shuffle is not None else shuffle(y, 2)
        return self.head(y)


@pytest.mark.parametrize("module", [False, True], ids=["view-transpose", "nn.ChannelShuffle"])
def test_channel_shuffle_prunes_the_same_positions_in_both_groups(module):
    x = torch.randn(2, 3, 4, 4)
    result = graphprune.prune(Shuffle(module), x, ratio=0.5, mode="group")
    kept_a = result.plan.kept_indices("a.weight", 0)
    assert kept_a.tolist() == result.plan.kept_indices("b.weight", 0).tolist()
    assert kept_a.numel() == 3 and result.compact.head.in_channels == 6
    assert_exact(result, x)


# -- SE block -----------------------------------------------------------------


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        return self.head(y * gate)


def test_se_gate_is_coupled_to_the_channels_it_scales():
    x = torch.randn(2, 3, 6, 6)
    result = graphprune.prune(SqueezeExcite(), x, ratio=0.5)
    c = result.compact
    assert c.conv.out_channels == c.fc2.out_channels == c.fc1.in_channels == c.head.in_channels < 8
    assert c.fc1.out_channels < 4
    assert_exact(result, x)


def test_se_gate_does_not_decide_the_channels_it_scales_in_per_layer_mode():
    """The product is zero where the gated conv drops a channel, whatever fc2
    keeps: the conv's own top half is kept, not its union with fc2's (which
    would keep channels that carry only BatchNorm's shift times the gate)."""
    x = torch.randn(2, 3, 6, 6)
    model = SqueezeExcite()
    set_filter_norms(model.conv, A_NORMS)  # the conv keeps 0..3
    set_filter_norms(model.fc2, B_NORMS)  # fc2 alone would keep 2..5
    result = graphprune.prune(model, x, ratio=0.5, mode="per_layer")
    kept = sorted(top(A_NORMS, 4))
    for slot in ("conv.weight", "fc2.weight"):
        assert result.plan.kept_indices(slot, 0).tolist() == kept
    assert result.plan.kept_indices("head.weight", 1).tolist() == kept
    # fc2 masks its own dropped rows where the conv keeps the channel (0, 1) and every
    # dropped channel's row, kept or not by fc2's own ranking (4, 5)
    fc2 = result.masked.fc2.weight.detach().flatten(1).abs().sum(1)
    assert fc2.nonzero().flatten().tolist() == [2, 3]
    assert_exact(result, x)


class TwoGates(nn.Module):
    """a * b of two convs, each zero where its own layer drops: the product is zero
    where either is, and union (kept where either keeps) stays lossless."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.conv_b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 2, 1)
        set_filter_norms(self.conv_a, A_NORMS)
        set_filter_norms(self.conv_b, B_NORMS)

    def forward(self, x):
        return self.head(F.relu(self.conv_a(x)) * torch.tanh(self.conv_b(x)))


def test_product_of_two_zero_preserving_factors_keeps_the_union():
    x = torch.randn(2, 3, 6, 6)
    result = graphprune.prune(TwoGates(), x, ratio=0.5, mode="per_layer")
    assert result.plan.kept_indices("conv_a.weight", 0).tolist() == sorted(top(A_NORMS, 4) | top(B_NORMS, 4))
    assert_exact(result, x)


# -- depthwise and grouped convs ---------------------------------------------


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.bn(self.dw(self.conv(x))))
        return self.head(F.relu(self.grouped(y)))


def test_depthwise_follows_its_input_and_grouped_conv_keeps_its_groups():
    x = torch.randn(2, 3, 6, 6)
    result = graphprune.prune(Grouped(), x, ratio=0.5)
    c = result.compact
    assert c.dw.groups == c.dw.in_channels == c.dw.out_channels == c.conv.out_channels < 8
    assert c.dw.weight.shape[0] == c.dw.out_channels
    assert c.grouped.groups == 2
    assert c.grouped.out_channels == 4 and c.grouped.in_channels % 2 == 0
    assert_exact(result, x)


# -- bias without BN, transposed conv -----------------------------------------


class BiasTransposed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=True)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.head(F.relu(self.up(F.relu(self.conv(x)))))


def test_conv_bias_is_masked_and_transposed_conv_is_sliced_on_both_sides():
    x = torch.randn(2, 3, 4, 4)
    result = graphprune.prune(BiasTransposed(), x, ratio=0.5)
    dropped = sorted(set(range(8)) - set(result.plan.kept_indices("conv.weight", 0).tolist()))
    assert torch.equal(result.masked.conv.bias[dropped], torch.zeros(len(dropped)))
    c = result.compact
    assert (c.conv.out_channels, c.up.in_channels, c.up.out_channels, c.head.in_channels) == (4, 4, 3, 3)
    assert_exact(result, x)


# -- ops that do not map 0 to 0 -----------------------------------------------


class NonZero(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.op(self.conv(x)))


@pytest.mark.parametrize(
    "op", [torch.sigmoid, lambda y: y + 1, nn.Hardsigmoid()], ids=["sigmoid", "plus-one", "hardsigmoid"]
)
def test_channel_that_is_not_zero_when_dropped_is_pinned(op):
    x = torch.randn(2, 3, 4, 4)
    result = graphprune.prune(NonZero(op), x, ratio=0.5)
    assert result.compact.conv.out_channels == 8
    group = result.plan.group_of("conv")
    assert group.prunable == 0
    assert any("not zero when dropped" in r for r in group.reasons)
    assert_exact(result, x)


# -- an op without a rule -----------------------------------------------------


@torch.fx.wrap
def channel_roll(x):
    return torch.roll(x, 1, dims=1)


class Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.mid = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = channel_roll(F.relu(self.conv(x)))
        return self.head(F.relu(self.mid(y)))


def test_unknown_op_pins_its_channels_and_the_model_stays_exact():
    x = torch.randn(2, 3, 4, 4)
    result = graphprune.prune(Unknown(), x, ratio=0.5)
    c = result.compact
    assert c.conv.out_channels == 8 and c.mid.in_channels == 8
    assert c.mid.out_channels == 4  # downstream of the unknown op, pruning goes on
    reasons = result.plan.group_of("conv").reasons
    assert any("channel_roll" in r and "no channel rule" in r for r in reasons)
    assert_exact(result, x)


# -- in-place ops and weights read directly in forward ------------------------


class InPlaceShift(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        z = y * 2
        y.add_(1)  # later readers of y see y + 1: dropped channels are no longer zero
        return self.head(y) + self.head(z)


def test_in_place_op_updates_what_later_readers_of_its_input_see():
    x = torch.randn(2, 3, 4, 4)
    result = graphprune.prune(InPlaceShift(), x, ratio=0.5)
    assert result.compact.conv.out_channels == 8
    assert_exact(result, x)


class WeightReadInForward(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return self.head(y) * self.conv.weight.mean()


def test_weight_also_read_directly_in_forward_is_pinned():
    x = torch.randn(2, 3, 4, 4)
    result = graphprune.prune(WeightReadInForward(), x, ratio=0.5)
    assert result.compact.conv.out_channels == 8
    assert any("read directly in forward" in r for r in result.plan.group_of("conv").reasons)
    assert_exact(result, x)


def test_type_as_reads_only_the_dtype_of_its_argument():
    """ultralytics' make_anchors: torch.arange(w).type_as(feats[0]) must not pin feats[0]."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(y) + torch.arange(y.shape[-1]).type_as(y)

    result = graphprune.prune(Net().eval(), torch.randn(1, 3, 8, 8), ratio=0.5)
    assert result.report.exact and result.compact.a.out_channels == 8
    assert list(result.report.pinned) == ["reaches the model output"]
