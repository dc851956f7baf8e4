"""Bugs the fuzzer (tests/test_fuzz.py, benchmarks/fuzz.py) found, each as a
small hand-written model that failed before its fix.

Every test prunes with ``verify=False`` where the bug made a silently wrong
model, and checks compact == masked itself, so the test fails on the bug even
if the verify pass would have caught it.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune


def set_filter_norms(conv: nn.Module, norms: list[float]) -> None:
    """Filter i of ``conv`` gets L1 norm proportional to norms[i] (so L1 drops the smallest)."""
    with torch.no_grad():
        w = torch.ones_like(conv.weight) / conv.weight[0].numel()
        conv.weight.copy_(w * torch.tensor(norms, dtype=w.dtype).view(-1, *([1] * (w.ndim - 1))))


def assert_exact(result, *inputs):
    """compact == masked on fresh inputs of the example's shape (each run gets its own copy)."""
    fresh = [torch.randn_like(x) for x in inputs]
    with torch.no_grad():
        expected = result.masked(*(x.clone() for x in fresh))
        got = result.compact(*(x.clone() for x in fresh))
    expected, got = (expected, got) if isinstance(expected, tuple) else ((expected,), (got,))
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        assert (e - g).abs().max() <= 1e-5 * e.abs().max() + 1e-7


def smaller(result, model: nn.Module) -> bool:
    return sum(p.numel() for p in result.compact.parameters()) < sum(p.numel() for p in model.parameters())


# -- narrow and slicing with bounds computed in the graph ----------------------
# Bug: NarrowRule.rewrite added an int to an fx.Node (TypeError from inside
# prune); a slice bound computed from x.shape was passed to slice.indices().


class ComputedBounds(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head_a = nn.Conv2d(3, 4, 1)
        self.head_b = nn.Conv2d(5, 4, 1)
        self.head_c = nn.Conv2d(6, 4, 1)
        set_filter_norms(self.conv, [1, 9, 8, 2, 7, 6, 3, 5])

    def forward(self, x):
        y = F.relu(self.conv(x))
        a = y.narrow(1, 0, 3)
        b = torch.narrow(y, 1, 3, y.shape[1] - 3)
        c = y[:, : y.shape[1] - 2]
        return self.head_a(a) + self.head_b(b) + self.head_c(c)


def test_narrow_and_slice_with_bounds_computed_from_the_shape():
    x = torch.randn(2, 3, 6, 6)
    model = ComputedBounds()
    result = graphprune.prune(model, x, ratio=0.5, verify=False)
    assert result.plan.kept_indices("conv.weight").tolist() == [1, 2, 4, 5]
    assert result.compact.head_a.in_channels == 2  # of channels 0..2, 1 and 2 are kept
    assert result.compact.head_b.in_channels == 2  # of channels 3..7, 4 and 5
    assert result.compact.head_c.in_channels == 4  # of channels 0..5, 1, 2, 4, 5
    assert_exact(result, x)


# -- ignore naming a module that forward never calls ---------------------------
# Bug: ignore was resolved against the traced graph only, which holds just the
# modules forward calls: ignoring an nn.ParameterDict whose entries forward
# reads directly (or an unused module) raised "the model has no such module".


class ScaledByParameterDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.scales = nn.ParameterDict({"a": nn.Parameter(torch.rand(8, 1, 1) + 0.5)})
        self.unused = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(F.relu(self.conv(x)) * self.scales["a"])


def test_ignore_a_parameter_dict_and_an_unused_module():
    x = torch.randn(2, 3, 8, 8)
    model = ScaledByParameterDict()
    free = graphprune.prune(model, x, ratio=0.5)
    assert free.compact.conv.out_channels == 4 and free.compact.get_parameter("scales.a").shape[0] == 4
    kept = graphprune.prune(model, x, ratio=0.5, ignore=["scales", "unused"])
    assert kept.compact.conv.out_channels == 8  # the scale is kept whole, so are the channels it scales
    assert kept.compact.get_parameter("scales.a").shape[0] == 8
    assert_exact(kept, x)


# -- a split piece of one channel whose channel is dropped ---------------------
# Bug: a piece of one channel has a code that does not vary, so its compact size
# was taken to be 1 even when that channel was dropped: split sizes that do not
# sum to the compact input (RuntimeError inside torch, from the rewritten graph).


class LonePiece(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)
        self.head = nn.Conv2d(4, 2, 1)
        set_filter_norms(self.conv, [9, 8, 7, 6, 1])

    def forward(self, x):
        main, last = torch.split(F.relu(self.conv(x)), [4, 1], 1)
        flat = last.view(-1, 1 * 6 * 6)  # a literal reshape of the lone channel, never read
        return self.head(main), flat.shape[0]


def test_split_piece_of_one_dropped_channel_keeps_the_split_valid():
    x = torch.randn(2, 3, 6, 6)
    model = LonePiece()
    result = graphprune.prune(model, x, ratio=0.5, verify=False)
    kept = result.plan.kept_indices("conv.weight").tolist()
    assert kept[:2] == [0, 1] and 4 in kept  # no tensor loses every channel: the lone piece keeps its one
    with torch.no_grad():
        out, n = result.compact(x)
    assert out.shape == (2, 2, 6, 6) and n == 2
    with torch.no_grad():
        expected = result.masked(x)[0]
    assert (expected - out).abs().max() <= 1e-5 * expected.abs().max()


# -- a model that writes its input in place -------------------------------------
# Bug: verify ran the masked model and then the compact model on the same
# tensors; a model that writes its input (x.mul_) gave the compact model a
# different input, and graphprune reported its own bug (VerificationError).
# The shape pass also wrote into the caller's example tensor.


class WritesItsInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x.mul_(2.0)
        return self.head(F.relu(self.conv(x)))


def test_model_that_writes_its_input_in_place():
    x = torch.randn(2, 3, 8, 8)
    before = x.clone()
    result = graphprune.prune(WritesItsInput(), x, ratio=0.5)
    assert result.report.exact
    assert torch.equal(x, before)  # the caller's example is not written
    assert result.compact.conv.out_channels == 4


# -- channel shuffle with many groups -------------------------------------------
# Bug: the shuffle rule coupled channels along whichever of (groups, channels
# per group) had more distinct ids; with groups >= channels per group it
# coupled whole groups, and the compact shuffle (still g groups) permuted the
# kept channels wrongly (silently) or refused a count not divisible by g.


class Shuffle(nn.Module):
    def __init__(self, channels: int, groups: int, how: str):
        super().__init__()
        self.how, self.groups = how, groups
        self.conv = nn.Conv2d(3, channels, 1)
        self.shuffle = nn.ChannelShuffle(groups)
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if self.how == "module":
            y = self.shuffle(y)
        elif self.how == "function":
            y = F.channel_shuffle(y, self.groups)
        else:  # torchvision's shufflenet, with sizes read from the input
            b, c, h, w = y.size()
            y = y.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        return self.head(y)


@pytest.mark.parametrize("how", ["module", "function", "manual"])
@pytest.mark.parametrize("channels,groups", [(9, 3), (6, 3), (3, 3), (8, 4)])
def test_channel_shuffle_with_at_least_as_many_groups_as_channels_per_group(how, channels, groups):
    x = torch.randn(2, 3, 5, 5)
    model = Shuffle(channels, groups, how)
    result = graphprune.prune(model, x, ratio=0.5, mode="group", verify=False)
    kept = result.plan.kept_indices("conv.weight")
    # (the manual form of 9 channels in 3 groups couples all 9: conservative, not wrong)
    assert kept.numel() < channels or channels == groups or (how, channels) == ("manual", 9)
    if how != "manual":  # the module and the function still split into g groups
        assert kept.numel() % groups == 0
        positions = (kept % (channels // groups)).reshape(groups, -1)
        assert (positions == positions[0]).all()  # the same positions in every group
    assert_exact(result, x)


# -- a channel broadcast over many channels ---------------------------------------
# Bug: in ``y + s`` with ``s`` one channel broadcast over the channels of ``y``,
# ``s`` was pinned but kept its zero bit, so a dropped channel of ``y`` counted as
# zero after the add (it is ``s``): the compact model silently differed.


class BroadcastChannel(nn.Module):
    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.gate = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y, s = F.relu(self.conv(x)), self.gate(x)
        if self.op == "add":
            y = y + s
        elif self.op == "mul":
            y = y * s
        else:
            y = s / (y.abs() + 1.0)
        return self.head(y)


@pytest.mark.parametrize("op,prunes", [("add", False), ("mul", True), ("div", False)])
def test_broadcast_channel_is_not_zero_where_the_channels_it_meets_are_dropped(op, prunes):
    x = torch.randn(2, 3, 6, 6)
    model = BroadcastChannel(op)
    result = graphprune.prune(model, x, ratio=0.5, verify=False)
    assert (result.compact.conv.out_channels < 8) == prunes  # 0 * s is zero; 0 + s and s / 1 are not
    assert_exact(result, x)


# -- indexing channels with a list ---------------------------------------------
# Bug: x[:, [5, 0, 5, 2]] kept its original indices in the compact graph
# (IndexError inside torch, or the wrong channels).


class ListIndex(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.head = nn.Conv2d(4, 2, 1)
        set_filter_norms(self.conv, [9, 1, 8, 2, 3, 7])  # keeps 0, 2, 5

    def forward(self, x):
        return self.head(F.relu(self.conv(x))[:, [5, 0, 5, 4]])


def test_index_channels_with_a_list():
    x = torch.randn(2, 3, 4, 4)
    result = graphprune.prune(ListIndex(), x, ratio=0.5, verify=False)
    assert result.plan.kept_indices("conv.weight").tolist() == [0, 2, 5]
    assert result.plan.kept_indices("head.weight", 1).tolist() == [0, 1, 2]  # 5, 0, 5 kept; 4 dropped
    assert result.compact.head.in_channels == 3
    assert_exact(result, x)


# -- unary minus and abs() -------------------------------------------------------
# Not a wrong model but a needless pin the fuzzer showed: ``-x`` and ``abs(x)``
# (operator.neg, operator.abs) had no rule, so their channels were never pruned.


class Negate(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(abs(-F.relu(self.conv(x))))


def test_unary_minus_and_abs_pass_channels_through():
    x = torch.randn(2, 3, 4, 4)
    result = graphprune.prune(Negate(), x, ratio=0.5)
    assert result.compact.conv.out_channels == 4
    assert_exact(result, x)


# -- an attention layer the export frontend decomposes -----------------------------
# Seeds 700021 and 700163 of ``fuzz.py --frontend export``: torch.export writes
# nn.MultiheadAttention as aten ops, so no call of it sets its embed_dim; where no
# constant in those ops changed (its output unused, or one head that must stay), its
# input channels were pruned and its own forward refused the narrower input.


class UnusedAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = nn.MultiheadAttention(8, 1, batch_first=True)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        tokens = y.flatten(2).transpose(1, 2)
        _ = self.attn(tokens, tokens, tokens, need_weights=False)[0]  # computed, not used
        return self.head(F.relu(y))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_decomposed_attention_keeps_the_width_its_forward_checks(frontend):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4)
    result = graphprune.prune(UnusedAttention().eval(), x, ratio=0.5, verify=False, frontend=frontend)
    if frontend == "export":  # the attention runs on the conv's channels, as wide as its weights say
        assert result.compact.conv.out_channels == result.compact.attn.in_proj_weight.shape[1] == 8
    assert_exact(result, x)  # fx: the attention is one call, pruned through (a compact attention layer)
