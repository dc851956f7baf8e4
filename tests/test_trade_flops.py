"""trade_flops: a latency target that ranks channels by score over the time a FLOP of theirs costs."""

import pytest
import torch
from test_budget import SmallNet

import graphprune
from graphprune import budget
from graphprune.budget import latency_model as lm
from graphprune.cli import main
from graphprune.errors import ConfigError
from graphprune.flops import FlopsModel
from graphprune.passes import SelectPass
from graphprune.passes.select import GlobalRanking, class_scores
from graphprune.pipeline import Pipeline

X = torch.randn(1, 3, 16, 16)
# a machine that computes 10 FLOPs in the time it moves one byte: depthwise convs are memory-bound on it
ROOFLINE = lm.Roofline(flops_per_ms=1e8, bytes_per_ms=1e7, threads=1)


@pytest.fixture(scope="module")
def state():
    return graphprune.prune(SmallNet().eval(), X, mode="global", ratio=0.5, verify=False).state


@pytest.fixture
def fixed_roofline(monkeypatch):
    monkeypatch.setattr(lm, "measure_roofline", lambda threads=None: ROOFLINE)


def test_marginal_is_what_dropping_one_channel_saves(state):
    model = FlopsModel.build(state.graph, state.channels, state.example_inputs)
    kept = torch.ones(state.channels.num_classes, dtype=torch.bool)
    saved = model.marginal(kept)
    ranking = GlobalRanking.of(state, class_scores(state))
    for c in ranking.order[::7].tolist():
        less = kept.clone()
        less[c] = False
        assert model.predict(kept) - model.predict(less) == pytest.approx(float(saved[c]), rel=1e-6)
    assert float(saved[ranking.order].min()) > 0


def test_equal_scores_drop_first_the_channels_whose_flops_cost_most_time(state, fixed_roofline):
    model, roofline = lm.latency_model(state, None)
    assert roofline == ROOFLINE
    flops = FlopsModel.build(state.graph, state.channels, state.example_inputs)
    ranking = GlobalRanking.of(state, class_scores(state))
    at = torch.ones(state.channels.num_classes, dtype=torch.bool)
    order = lm.latency_order(ranking.order, torch.ones_like(ranking.scores), model, flops, at)
    assert sorted(order.tolist()) == sorted(ranking.order.tolist())  # the same channels, reordered
    per_flop = model.marginal(at)[order] / flops.marginal(at)[order]
    assert bool((per_flop[:-1] >= per_flop[1:] * (1 - 1e-9)).all())  # most time per FLOP first
    # (the last ranked channel of each group:) first the channels flattened into the linear head (its weights are most of what it moves: 0.5 FLOPs
    # per byte), then those the depthwise conv reads (2.25 per byte), last the stem's (a dense 3x3 conv)
    rank = {c: i for i, c in enumerate(order.tolist())}
    firsts = [max(rank[c] for c in g.classes.tolist() if c in rank) for name in ("down.0", "grouped.0", "stem.0")
              for g in state.groups if g.name == name]
    assert firsts == sorted(firsts) and len(firsts) == 3


def test_a_latency_target_with_trade_flops_reports_what_it_traded(fixed_roofline):
    search = budget.LatencySearch(runs=3, rounds=2, warmup=1, candidates=2)
    pipeline = Pipeline.default().replace("select", SelectPass(latency=search))
    result = graphprune.prune(SmallNet().eval(), X, mode="global", target_latency=0.6, trade_flops=True,
                              pipeline=pipeline)
    trade = result.state.budget.trade
    assert trade["ranking"] == "score per ms per FLOP" and trade["roofline_gflops"] == pytest.approx(100.0)
    assert 0 < trade["score_kept"] <= 1 and 0 < trade["score_kept_plain"] <= 1
    assert 0 < trade["flops_fraction_plain"] <= 1
    assert any(n.startswith("trade_flops: channels ranked by score over the time a FLOP") for n in result.report.notes)
    assert result.report.exact


def test_without_trade_flops_a_latency_target_ranks_by_score_alone():
    search = budget.LatencySearch(runs=3, rounds=2, warmup=1, candidates=1)
    pipeline = Pipeline.default().replace("select", SelectPass(latency=search))
    result = graphprune.prune(SmallNet().eval(), X, mode="global", target_latency=0.6, pipeline=pipeline,
                              verify=False)
    assert result.state.budget.trade is None
    assert not any(n.startswith("trade_flops") for n in result.report.notes)


def test_a_flops_target_with_trade_flops_keeps_the_flops_and_costs_less_time(fixed_roofline):
    result = graphprune.prune(SmallNet().eval(), X, mode="global", target_flops=0.5, trade_flops=True)
    b = result.state.budget
    assert b.achieved == pytest.approx(0.5, rel=0.03) and result.report.exact
    # cut at the same FLOPs, the plain order's model would take longer on this roofline
    assert b.trade["predicted_time_fraction"] < b.trade["predicted_time_fraction_plain"]
    assert b.trade["flops_fraction_plain"] == pytest.approx(b.achieved, rel=0.05)
    assert any(n.startswith("trade_flops:") and "cut at the same FLOPs" in n for n in result.report.notes)


def test_trade_flops_needs_a_budget(capsys):
    with pytest.raises(ConfigError, match="trade_flops trades FLOPs between layers for latency within a budget"):
        graphprune.prune(SmallNet().eval(), X, mode="global", ratio=0.5, trade_flops=True)
    code = main(["prune", "resnet18", "--input-shape", "1,3,32,32", "--no-latency", "--trade-flops"])
    assert code == 1 and "give target_flops or target_latency too" in capsys.readouterr().err
