"""Users insert, replace and drop passes without editing graphprune."""

import pytest
import torch
import torch.nn as nn
import torchvision

import graphprune
from graphprune import Pipeline
from graphprune.errors import PipelineError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


class KeepLowIndices:
    """A user criterion written as a pass: the lower the channel index, the better."""

    name = "keep_low_indices"
    requires = ("channels",)
    provides = ("scores",)

    def __call__(self, state):
        state.scores = {
            p.weight: -torch.arange(p.ids.numel(), dtype=torch.float32) for p in state.channels.producers
        }


class RecordPlan:
    name = "record_plan"
    requires = ("plan",)
    provides = ()

    def __call__(self, state):
        state.extras["groups_seen"] = [g.name for g in state.plan.groups]


def test_replacing_the_score_pass_changes_what_is_kept():
    pipeline = Pipeline.default().replace("score", KeepLowIndices())
    result = graphprune.prune(Net(), torch.randn(1, 3, 6, 6), pipeline=pipeline)
    assert result.plan.kept_indices("conv.weight", 0).tolist() == [0, 1, 2, 3]
    assert result.report.exact
    assert "keep_low_indices" in result.report.timings


def test_inserting_and_removing_passes():
    pipeline = Pipeline.default().insert_after("select", RecordPlan()).remove("measure")
    assert pipeline.names.index("record_plan") == pipeline.names.index("select") + 1
    result = graphprune.prune(Net(), torch.randn(1, 3, 6, 6), pipeline=pipeline)
    assert result.state.extras["groups_seen"] == ["conv", "head"]
    assert result.report.params_before is None
    assert "measure" not in result.report.timings


def test_a_pass_whose_inputs_are_missing_is_reported_by_name():
    pipeline = Pipeline.default().remove("score")
    with pytest.raises(PipelineError, match="'select' needs scores"):
        graphprune.prune(Net(), torch.randn(1, 3, 6, 6), pipeline=pipeline)


def test_default_pipeline_names_every_stage_of_the_design():
    assert Pipeline.default().names == [
        "trace", "shapes", "channels", "structure", "groups", "score", "select", "rewrite", "apply", "mask", "fold",
        "verify", "measure",
    ]


def test_training_mode_is_traced_only_where_the_traced_code_reads_a_training_flag(monkeypatch):
    from graphprune import tracing

    traced = []
    original = tracing.trace
    monkeypatch.setattr(tracing, "trace", lambda model, **kw: traced.append(model.training) or original(model, **kw))
    x = torch.randn(2, 3, 32, 32)
    result = graphprune.prune(torchvision.models.resnet18(num_classes=10), x)
    assert traced == [False] and result.state.train_graph is None  # nothing reads self.training
    assert result.state.graph.meta[tracing.READS_TRAINING_KEY] is False
    assert "training" not in nn.Module.__dict__  # the watch is gone after tracing

    traced.clear()
    aux = torchvision.models.googlenet(num_classes=10, aux_logits=True, init_weights=False).eval()
    result = graphprune.prune(aux, torch.randn(2, 3, 64, 64), verify=False)
    assert traced == [False, True] and result.state.train_graph is not None  # `if self.training:` aux heads


class AuxByTrainOverride(nn.Module):
    """Its forward reads a flag of its own, which its ``train()`` sets: no read of ``training`` shows it."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head, self.aux = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 2, 1)
        self.with_aux = False

    def train(self, mode: bool = True):
        super().train(mode)
        self.with_aux = mode
        return self

    def forward(self, x):
        y = self.body(x)
        return (self.head(y), self.aux(y)) if self.with_aux else self.head(y)


def test_a_class_with_its_own_train_is_traced_in_training_mode_too():
    result = graphprune.prune(AuxByTrainOverride().eval(), torch.randn(2, 3, 16, 16))
    assert result.state.train_graph is not None
    assert any(n.target == "aux" for n in result.state.train_graph.graph.nodes)
    assert result.report.exact and result.report.verification.train_max_rel_error <= 1e-4


def test_the_training_flag_watch_is_removed_when_tracing_fails():
    class Broken(nn.Module):
        def forward(self, x):
            if x.sum() > 0 and self.training:  # data-dependent: fx cannot trace it
                return x
            return -x

    with pytest.raises(graphprune.TraceError):
        graphprune.prune(Broken(), torch.randn(1, 3, 8, 8), frontend="fx")
    assert "training" not in nn.Module.__dict__
    assert Broken().training and not Broken().eval().training


def test_the_structure_pass_dry_run_leaves_the_graph_as_it_was():
    # the structure pass asks the rewrite what it would change, on the traced graph itself (no copy)
    from graphprune.passes.rewrite import changes_for
    from graphprune.passes.structure import probes

    class Literal(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(4, 4, 1), nn.Linear(8, 2)

        def forward(self, x):
            p, q = torch.split(self.a(x), [4, 4], 1)
            return self.head(torch.cat([self.b(p), q], 1).mean((2, 3)).view(-1, 8))

    state = graphprune.prune(Literal().eval(), torch.randn(1, 3, 8, 8), ratio=0.5, verify=False).state
    gm = state.graph

    def snapshot():
        return [(n.name, n.op, str(n.target), str(n.args), str(n.kwargs), sorted(u.name for u in n.users))
                for n in gm.graph.nodes]

    before, code = snapshot(), gm.graph.python_code("self").src
    changed = changes_for(gm, probes(state)[1])
    assert any("split" in what for what in changed.values()) and any("view" in what for what in changed.values())
    assert snapshot() == before and gm.graph.python_code("self").src == code
    gm.graph.lint()
