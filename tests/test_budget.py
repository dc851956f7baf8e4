"""Pruning to a budget: target_flops and target_latency in global mode (graphprune.budget)."""

import json

import pytest
import torch
import torch.nn as nn
import torchvision

import graphprune
from graphprune import budget
from graphprune.cli import main
from graphprune.flops import FlopsModel, count_flops
from graphprune.passes import SelectPass
from graphprune.pipeline import Pipeline


class SmallNet(nn.Module):
    """Every kind of layer the FLOPs model scales: plain, grouped and depthwise
    convs, a residual add, and a flatten into a linear layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.grouped = nn.Sequential(nn.Conv2d(32, 48, 3, padding=1, groups=4), nn.BatchNorm2d(48), nn.ReLU())
        self.depthwise = nn.Sequential(nn.Conv2d(48, 48, 3, padding=1, groups=48), nn.BatchNorm2d(48), nn.ReLU())
        self.pointwise = nn.Sequential(nn.Conv2d(48, 32, 1), nn.BatchNorm2d(32))
        self.down = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(64 * 8 * 8, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.pointwise(self.depthwise(self.grouped(x))))
        return self.head(torch.flatten(self.down(x), 1))


def fraction(result):
    r = result.report
    return r.flops_after / r.flops_before


def within(achieved, target, tolerance=0.02):
    return abs(achieved - target) <= tolerance * target


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7])
@pytest.mark.parametrize(
    "name, shape, criterion",
    [("resnet18", (1, 3, 64, 64), "l1"), ("mobilenet_v3_small", (1, 3, 64, 64), "fpgm")],
)
def test_flops_target_is_met_within_two_percent(name, shape, criterion, target):
    model = torchvision.models.get_model(name, num_classes=10).eval()
    result = graphprune.prune(model, torch.randn(shape), mode="global", target_flops=target, criterion=criterion)
    achieved = fraction(result)
    assert within(achieved, target), (achieved, result.report.notes)
    assert result.report.exact
    # the search's model is the measure pass's count, and torch.utils.flop_counter counts the same on the compact model
    b = result.state.budget
    assert round(b.flops_predicted) == result.report.flops_after and b.flops_dense == result.report.flops_before
    assert b.flops_confirmed is None  # built from shapes: nothing was counted by running
    assert count_flops(result.compact, (torch.randn(shape),)) == result.report.flops_after
    assert result.report.budget.target == target
    assert any(n.startswith(f"target_flops {target:g}: the compact model has") for n in result.report.notes)


@pytest.mark.parametrize("criterion", ["l2", "bn", "random"])
def test_flops_target_on_grouped_depthwise_and_linear_layers(criterion):
    result = graphprune.prune(SmallNet().eval(), torch.randn(1, 3, 16, 16), mode="global",
                              target_flops=0.5, criterion=criterion)
    assert within(fraction(result), 0.5), result.report.notes
    assert result.report.exact


def test_flops_model_predicts_the_real_count_of_any_kept_set():
    x = torch.randn(1, 3, 16, 16)
    result = graphprune.prune(SmallNet().eval(), x, mode="global", ratio=0.3)
    state = result.state
    model = FlopsModel.build(state.graph, state.channels, (x,))
    build = SelectPass().candidate_builder(state)
    assert model.dense == count_flops(state.graph, (x,))
    g = torch.Generator().manual_seed(0)
    for keep_probability in (0.2, 0.5, 0.9):
        kept = state.channels.pinned | (torch.rand(state.channels.num_classes, generator=g) < keep_probability)
        kept[0] = True
        for group in state.groups:  # no group empty: a compact conv needs a channel
            kept[group.classes[0]] = True
        real = count_flops(build(kept), (x,))
        assert real < model.dense
        assert model.predict(kept) == pytest.approx(real, rel=1e-9)


def test_round_to_min_channels_and_ignore_hold_with_a_target():
    model = torchvision.models.resnet18(num_classes=10).eval()
    result = graphprune.prune(model, torch.randn(1, 3, 64, 64), mode="global", target_flops=0.4,
                              round_to=8, min_channels=16, ignore=["layer3.0.conv1"])
    assert within(fraction(result), 0.4), result.report.notes
    for d in result.plan.decisions():
        if d.group.prunable == d.group.size:
            assert d.kept_count % 8 == 0 or d.kept_count == d.group.size, d.group.name
            assert d.kept_count >= 16
    assert result.compact.get_submodule("layer3.0.conv1").out_channels == 256
    assert result.report.exact


def test_unreachable_target_prunes_as_far_as_allowed_and_says_so():
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    # with layer1 to layer3 ignored, most FLOPs cannot go
    ignore = ["conv1", "layer1.*", "layer2.*", "layer3.*"]
    result = graphprune.prune(model, x, mode="global", target_flops=0.1, ignore=ignore)
    achieved = fraction(result)
    assert achieved > 0.5
    notes = [n for n in result.report.notes if n.startswith("target_flops 0.1 cannot be reached")]
    assert notes and f"{achieved:.4f}" in notes[0] and "best reachable" in notes[0]
    # as far as allowed: a lower target gives no smaller model
    lower = graphprune.prune(model, x, mode="global", target_flops=0.01, ignore=ignore)
    assert lower.report.flops_after == result.report.flops_after


def test_full_target_prunes_nothing():
    result = graphprune.prune(SmallNet().eval(), torch.randn(1, 3, 16, 16), mode="global", target_flops=1.0)
    assert result.report.flops_after == result.report.flops_before


def test_timings_name_every_pass_with_a_target():
    result = graphprune.prune(SmallNet().eval(), torch.randn(1, 3, 16, 16), mode="global", target_flops=0.6)
    assert list(result.report.timings) == Pipeline.default().names
    assert all(t >= 0 for t in result.report.timings.values())


def test_bisect_cut_brackets_the_goal_of_a_step_function():
    steps = [100, 100, 90, 90, 90, 60, 55, 55, 20, 10]
    cost = steps.__getitem__
    assert budget.bisect_cut(cost, 9, 58) == (5, 6)
    assert budget.bisect_cut(cost, 9, 90) == (1, 2)
    assert budget.bisect_cut(cost, 9, 5) == (9, 9)  # out of reach: as far as it goes
    assert budget.bisect_cut(cost, 9, 100) == (0, 0)


def test_target_latency_records_dense_and_compact_medians():
    search = budget.LatencySearch(runs=3, rounds=2, warmup=1, candidates=2)
    pipeline = Pipeline.default().replace("select", SelectPass(latency=search))
    result = graphprune.prune(SmallNet().eval(), torch.randn(1, 3, 16, 16), mode="global", target_latency=0.6,
                              pipeline=pipeline)
    b = result.state.budget
    assert b.kind == "latency" and b.target == 0.6
    assert b.dense_ms > 0 and b.compact_ms > 0
    assert b.achieved == pytest.approx(b.compact_ms / b.dense_ms)
    assert 1 <= len(b.candidates) <= 2
    assert result.report.flops_after < result.report.flops_before
    assert b.flops_fraction == pytest.approx(fraction(result))
    assert any(n.startswith("target_latency 0.6") and "noisy" in n for n in result.report.notes)
    assert result.report.budget.compact_ms == b.compact_ms
    assert result.report.exact


def test_cli_target_flops_prints_target_and_achieved(tmp_path, capsys):
    report = tmp_path / "report.json"
    code = main(["prune", "resnet18", "--input-shape", "1,3,32,32", "--target-flops", "0.5", "--round-to", "8",
                 "--no-latency", "--report", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    assert "target FLOPs 0.5" in out and "global" in out and "FLOPs target" in out and "achieved" in out
    doc = json.loads(report.read_text())
    assert doc["budget"]["target_flops"] == 0.5
    assert within(doc["flops"]["after"] / doc["flops"]["before"], 0.5)


def test_cli_target_latency(capsys):
    code = main(["prune", "squeezenet1_1", "--input-shape", "1,3,32,32", "--target-latency", "0.7",
                 "--no-latency", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0
    assert doc["budget"]["target_latency"] == 0.7
    assert doc["budget"]["latency_dense_ms"] > 0 and doc["budget"]["latency_compact_ms"] > 0


@pytest.mark.parametrize(
    "args, match",
    [
        (["--target-flops", "0.5", "--mode", "per_layer"], "implies --mode global; drop --mode per_layer"),
        (["--target-latency", "0.5", "--mode", "group"], "implies --mode global; drop --mode group"),
        (["--target-flops", "0.5", "--ratio", "0.3"], "give --ratio or --target-flops, not both"),
        (["--target-flops", "1.5"], "target_flops must be a fraction of the dense model in (0, 1]"),
        (["--target-flops", "0.5", "--target-latency", "0.5"], "give target_flops or target_latency, not both"),
    ],
)
def test_cli_refuses_a_target_with_another_mode(args, match, capsys):
    code = main(["prune", "resnet18", "--input-shape", "1,3,32,32", "--no-latency", *args])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("graphprune: error:") and match in err, err


def test_cli_global_mode_spelled_out_with_a_target_is_accepted(capsys):
    code = main(["prune", "resnet18", "--input-shape", "1,3,32,32", "--no-latency", "--json",
                 "--target-flops", "0.6", "--mode", "global"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and within(doc["flops"]["after"] / doc["flops"]["before"], 0.6)
