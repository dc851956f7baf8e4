"""Users insert, replace and drop passes without editing graphprune."""

import pytest
import torch
import torch.nn as nn

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
