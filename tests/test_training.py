"""Masked fine-tuning, reconstruction, and constant folding without BN masking."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers import calibrate

import graphprune
from graphprune.tensors import get_tensor


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)) if cin != cout else None

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.short is None else self.short(x)))


class SmallResNet(nn.Module):
    """Bottleneck blocks with BatchNorm: several convs write each residual stream."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.blocks = nn.Sequential(Bottleneck(16, 8, 32), Bottleneck(32, 8, 32), Bottleneck(32, 16, 48))
        self.fc = nn.Linear(48, classes)

    def forward(self, x):
        return self.fc(self.blocks(F.relu(self.bn(self.stem(x)))).mean((2, 3)))


def dropped_values(result, model) -> torch.Tensor:
    """Every value of every written slot that the plan drops, read through the
    module as forward sees it."""
    plan, out = result.plan, []
    for slot in plan.channels.slots:
        if slot.writes:
            index = plan.raw_dropped[slot.ids].nonzero().flatten()
            out.append(get_tensor(model, slot.target).detach().index_select(slot.dim, index).reshape(-1))
    return torch.cat(out)


def train(model, steps: int, optimizer, seed: int = 1, batch: int = 16, fixed: bool = False):
    """Steps of cross-entropy on random data (one fixed batch if ``fixed``, to
    see the loss fall)."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    for _ in range(steps):
        if fixed:
            g.manual_seed(seed)
        x = torch.randn(batch, 3, 16, 16, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.fixture
def pruned():
    x = torch.randn(2, 3, 16, 16)
    return graphprune.prune(calibrate(SmallResNet(), x), x, ratio=0.5)


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2),
], ids=["sgd-momentum-wd", "adam", "adamw"])
def test_masked_fine_tuning_keeps_zeros_and_reconstructs_exactly(pruned, make_optimizer):
    masked = pruned.masked
    before = {k: v.clone() for k, v in masked.state_dict().items()}
    assert int(dropped_values(pruned, masked).ne(0).sum()) == 0
    train(masked, 6, make_optimizer(masked.parameters()))
    after = masked.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k), "BN stats must train"
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    assert int(dropped_values(pruned, masked).ne(0).sum()) == 0

    rec = graphprune.reconstruct(masked)
    assert rec.report.exact and rec.report.max_rel_error <= 1e-4
    assert rec.report.params_after == pruned.report.params_after
    masked.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(rec.compact(x), masked(x), rtol=1e-4, atol=1e-5)


def test_reconstruct_leaves_the_masked_model_as_it_was(pruned):
    masked = pruned.masked.train()
    rec = graphprune.reconstruct(masked)
    assert masked.training, "reconstruct must not switch the user's model to eval mode"
    assert type(masked.stem) is nn.Conv2d and graphprune.masks.channel_masks(masked)  # the user's classes, masked
    assert type(rec.compact.stem) is nn.Conv2d and not graphprune.masks.channel_masks(rec.compact)
    assert list(rec.compact.state_dict()) == list(masked.state_dict())
    train(masked, 2, torch.optim.SGD(masked.parameters(), lr=0.01))  # still trainable afterwards
    assert int(dropped_values(pruned, masked).ne(0).sum()) == 0


def test_the_other_order_fine_tunes_the_compact_model(pruned):
    compact = pruned.compact
    assert all(p.requires_grad for p in compact.parameters())
    weight = compact.stem.weight.detach().clone()
    losses = train(compact, 20, torch.optim.SGD(compact.parameters(), lr=0.05, momentum=0.9), fixed=True)
    assert not torch.equal(weight, compact.stem.weight)
    assert sum(losses[-5:]) < sum(losses[:5])
    assert compact.stem.weight.shape == weight.shape


def test_reconstruct_refuses_a_model_that_is_not_a_masked_model():
    with pytest.raises(graphprune.ConfigError, match="reconstruct takes the masked model"):
        graphprune.reconstruct(SmallResNet())


def test_masks_survive_training_on_the_export_frontend():
    x = torch.randn(2, 3, 16, 16)
    result = graphprune.prune(calibrate(SmallResNet(), x), x, ratio=0.5, frontend="export")
    masked = result.masked
    train(masked, 3, torch.optim.SGD(masked.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3))
    assert int(dropped_values(result, masked).ne(0).sum()) == 0
    assert graphprune.reconstruct(masked).report.exact


@pytest.mark.slow  # two processes and a gloo group: ~20 s, in the slow tier (CI runs it)
def test_ddp_keeps_masks_on_both_ranks_and_reconstructs_identically(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(worker), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rank, s in enumerate(states):
        assert s["dropped_nonzero"] == 0, f"rank {rank} lost its masks"
        assert s["exact"], f"rank {rank}: reconstructed != masked ({s['max_rel_error']})"
        assert s["steps"] == 4
    a, b = states[0]["compact"], states[1]["compact"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "the ranks' compact models differ"
    assert any(not torch.equal(a[k], states[0]["initial"][k]) for k in a), "training changed nothing"


# -- constant folding without BN masking ---------------------------------------


class Foldable(nn.Module):
    """Dropped channels reach only a 1x1 conv, an unpadded 3x3 conv, and a
    linear layer after global pooling: their constants fold exactly."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.c3, self.b3 = nn.Conv2d(16, 24, 3, padding=0), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class Padded(Foldable):
    """Same, but the second layer is a padded 3x3 conv: not exact at the border."""

    def __init__(self):
        super().__init__()
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)


class Gated(Foldable):
    """A dropped channel times a per-sample gate varies with the input."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(3, 1)

    def forward(self, x):
        s = torch.sigmoid(self.gate(x.mean((2, 3))))[:, :, None, None]
        y = F.relu(self.b1(self.c1(x))) * s
        y = F.relu(self.b2(self.c2(y)))
        y = F.relu(self.b3(self.c3(y)))
        return self.fc(y.mean((2, 3)))


def class_dropped(result, target: str, kind: str) -> torch.Tensor:
    """Per index of that slot, whether the compact model drops it."""
    slot = next(s for s in result.plan.channels.slots if s.target == target and s.kind == kind)
    return ~result.plan.kept(slot.ids)


def with_offsets(model: nn.Module) -> nn.Module:
    """BN betas far from zero, so dropped channels are large constants."""
    x = torch.randn(4, 3, 16, 16)
    calibrate(model, x)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.uniform_(0.5, 1.5)
    return model


def test_folding_makes_reconstruction_exact_without_bn_masking():
    model, x = with_offsets(Foldable()), torch.randn(2, 3, 16, 16)
    unfolded = graphprune.prune(model, x, mask_bn=False, fold_constants=False, verify="report")
    assert not unfolded.report.exact and unfolded.report.max_rel_error > 1e-2, "the case must need folding"
    result = graphprune.prune(model, x, mask_bn=False)  # verify=True: raises if not exact
    assert result.report.exact and result.report.max_rel_error <= 1e-4
    assert {f.node for f in result.state.folds} == {"c2", "c3", "fc"}
    assert all(f.exact for f in result.state.folds)
    assert result.compact.c2.bias is not None and result.compact.c2.bias.shape == (result.compact.c2.out_channels,)
    # BN gamma/beta of dropped channels are left alone, filters are zeroed
    dropped = class_dropped(result, "c1.weight", "filter")
    assert bool(dropped.any())
    assert bool(result.masked.b1.bias.detach()[dropped].ne(0).all())
    assert bool(result.masked.c1.weight.detach()[dropped].eq(0).all())


def test_folding_follows_training_without_bn_masking():
    model, x = with_offsets(Foldable()), torch.randn(2, 3, 16, 16)
    result = graphprune.prune(model, x, mask_bn=False)
    masked = result.masked
    train(masked, 5, torch.optim.SGD(masked.parameters(), lr=0.05, momentum=0.9))
    rec = graphprune.reconstruct(masked)
    assert rec.report.exact and rec.report.max_rel_error <= 1e-4


def test_padded_consumer_is_reported_not_silently_wrong():
    model, x = with_offsets(Padded()), torch.randn(2, 3, 16, 16)
    with pytest.raises(graphprune.VerificationError, match=r"(?s)border.*c2.*mask_bn=True"):
        graphprune.prune(model, x, mask_bn=False)
    result = graphprune.prune(model, x, mask_bn=False, verify="report")
    note = next(n for n in result.report.notes if "border" in n)
    assert "c2 (inputs" in note
    c2 = next(f for f in result.state.folds if f.node == "c2")
    assert not c2.exact and c2.channels
    assert c2.channels == class_dropped(result, "c2.weight", "input").nonzero().flatten().tolist()
    # folding the interior value still beats dropping the constant
    unfolded = graphprune.prune(model, x, mask_bn=False, fold_constants=False, verify="report")
    assert result.report.max_rel_error < unfolded.report.max_rel_error


def test_channels_varying_with_the_input_are_reported():
    model, x = with_offsets(Gated()), torch.randn(2, 3, 16, 16)
    result = graphprune.prune(model, x, mask_bn=False, verify="report")
    assert any("vary with the input" in n and "c2" in n for n in result.report.notes)
    assert not result.report.exact


def test_saved_model_with_a_folded_bias_loads(tmp_path):
    model, x = with_offsets(Foldable()), torch.randn(2, 3, 16, 16)
    result = graphprune.prune(model, x, mask_bn=False)
    graphprune.save(result, tmp_path / "m")
    loaded = graphprune.load(tmp_path / "m", Foldable())
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.compact(x))


def test_folding_on_the_export_frontend_adds_a_bias_to_aten_convs():
    model, x = with_offsets(Foldable()), torch.randn(2, 3, 16, 16)
    result = graphprune.prune(model, x, mask_bn=False, frontend="export")
    assert result.report.frontend == "export" and result.report.exact
    folds = {f.node: f for f in result.state.folds}
    assert len(folds) == 3 and all(f.exact for f in folds.values())
    created = [f for f in folds.values() if f.bias is None]
    assert len(created) == 1 and hasattr(result.compact_graph, f"{created[0].node}_folded_bias")
    assert result.compact.get_submodule(created[0].weight.rpartition(".")[0]).bias is not None


def test_training_check_runs_in_float32_and_float64_decides_a_disagreement(monkeypatch):
    """The training-mode check runs as the model runs (float32); only where that
    disagrees is it run again in float64, whose verdict stands."""
    import graphprune.passes.verify as verify
    real, calls = verify.compare_in_training, []

    def spy(*args, dtype=torch.float64, **kwargs):
        calls.append(dtype)
        err, rel, what = real(*args, dtype=dtype, **kwargs)
        return (1.0, 1.0, "float32 round-off") if dtype is None and len(calls) == 1 and spy.disagree else \
            (err, rel, what)

    x = torch.randn(2, 3, 16, 16)
    spy.disagree = False
    monkeypatch.setattr(verify, "compare_in_training", spy)
    agreed = graphprune.prune(calibrate(SmallResNet(), x), x, ratio=0.5)
    assert calls == [None] and agreed.report.verification.train_max_rel_error < 1e-5
    calls.clear()
    spy.disagree = True  # float32 says 1.0 (as round-off under a BN of near-constants can): float64 decides
    decided = graphprune.prune(calibrate(SmallResNet(), x), x, ratio=0.5)
    assert calls == [None, torch.float64] and decided.report.verification.train_max_rel_error < 1e-10
    assert all(p.dtype == torch.float32 for p in (*decided.compact.parameters(), *decided.masked.parameters()))
