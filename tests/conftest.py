import os
import warnings

import pytest
import torch
import torchvision
from helpers import calibrate

import graphprune

# A rule that raises is a bug: in tests it must fail loudly, not be pinned quietly.
os.environ.setdefault("GRAPHPRUNE_STRICT_RULES", "1")

# The test models are tiny: with several threads, thread start-up and
# contention cost far more than the arithmetic (hundreds of times, on 2 cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state: no test depends on luck."""
    torch.manual_seed(0)


# -- torchvision classifiers, built once and compiled once per run -------------

# Input side of each model (64 unless named): what test_zoo and test_export compile at.
ZOO_SIZE = {"inception_v3": 96}


class ZooModel:
    """A torchvision classifier (10 classes, random weights, calibrated BatchNorm)
    and its example input, built once; ``compiled(mode)`` prunes it at ratio 0.5
    with L1 once per mode, for every test that reads that compile."""

    def __init__(self, name: str):
        self.name = name
        size = ZOO_SIZE.get(name, 64)
        self.x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(0)  # the weights do not depend on which test happens to build the model first
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torchvision.models.get_model(name, num_classes=10)
        self.model = calibrate(model, torch.randn(4, 3, size, size))
        self._compiled = {}

    def compiled(self, mode: str) -> graphprune.PruneResult:
        if mode not in self._compiled:
            self._compiled[mode] = graphprune.prune(self.model, self.x, ratio=0.5, criterion="l1", mode=mode)
        return self._compiled[mode]


@pytest.fixture(scope="session")
def zoo(request) -> ZooModel:
    """The torchvision model named by indirect parametrisation:
    ``@pytest.mark.parametrize("zoo", names, indirect=True)``.

    Session-scoped, so pytest runs every test of every module that reads one
    model together, and drops the model (and its compiles) before building
    the next: one model in memory at a time."""
    return ZooModel(request.param)
