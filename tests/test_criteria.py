"""Criteria: each picks what its definition says, on layers where the answer is known."""

import pytest
import torch
import torch.nn as nn

import graphprune
from graphprune.criteria import CRITERIA, LayerView

# Six 2-d filters around (20, 20). Nearest the geometric median: f0 and f5.
# Smallest L1 norm: f2 and f4.
FILTERS = torch.tensor([[20.0, 20], [30, 20], [10, 20], [20, 30], [20, 10], [21, 21]])


class OneLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 1, bias=False)
        self.head = nn.Conv2d(6, 3, 1)
        with torch.no_grad():
            self.conv.weight.copy_(FILTERS.view(6, 2, 1, 1))

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


@pytest.mark.parametrize(
    "criterion, kept",
    [("fpgm", [1, 2, 3, 4]), ("l1", [0, 1, 3, 5]), ("l2", [0, 1, 3, 5])],
)
def test_criterion_drops_the_filters_its_definition_names(criterion, kept):
    result = graphprune.prune(OneLayer(), torch.randn(1, 2, 3, 3), ratio=2 / 6, criterion=criterion)
    assert result.plan.kept_indices("conv.weight", 0).tolist() == kept


def test_fpgm_scores_are_summed_distances_to_the_other_filters():
    view = LayerView("conv", FILTERS, None, None, torch.Generator())
    scores = CRITERIA["fpgm"](view)
    assert torch.allclose(scores, torch.cdist(FILTERS, FILTERS).sum(1))
    assert set(torch.argsort(scores)[:2].tolist()) == {0, 5}


def test_bn_criterion_uses_the_gamma_of_the_norm_after_the_layer():
    class ConvBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 6, 1, bias=False)
            self.bn = nn.BatchNorm2d(6)
            self.head = nn.Conv2d(6, 3, 1)
            with torch.no_grad():
                self.bn.weight.copy_(torch.tensor([0.1, 5.0, 0.2, 4.0, 3.0, 0.3]))

        def forward(self, x):
            return self.head(torch.relu(self.bn(self.conv(x))))

    result = graphprune.prune(ConvBN(), torch.randn(1, 2, 3, 3), ratio=0.5, criterion="bn")
    assert result.plan.kept_indices("conv.weight", 0).tolist() == [1, 3, 4]


def test_random_criterion_is_seeded():
    def kept(seed):
        r = graphprune.prune(OneLayer(), torch.randn(1, 2, 3, 3), ratio=0.5, criterion="random", seed=seed)
        return r.plan.kept_indices("conv.weight", 0).tolist()

    assert kept(3) == kept(3)
    assert len({tuple(kept(s)) for s in range(6)}) > 1


def test_a_registered_criterion_is_usable_by_name():
    @graphprune.register_criterion("prefer_last")
    def prefer_last(layer):
        return torch.arange(layer.filters.shape[0], dtype=torch.float32)

    try:
        result = graphprune.prune(OneLayer(), torch.randn(1, 2, 3, 3), ratio=0.5, criterion="prefer_last")
        assert result.plan.kept_indices("conv.weight", 0).tolist() == [3, 4, 5]
    finally:
        del CRITERIA["prefer_last"]
