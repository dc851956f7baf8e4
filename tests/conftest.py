import os

import pytest
import torch

# A rule that raises is a bug: in tests it must fail loudly, not be pinned quietly.
os.environ.setdefault("GRAPHPRUNE_STRICT_RULES", "1")

# The test models are tiny: with several threads, thread start-up and
# contention cost far more than the arithmetic (hundreds of times, on 2 cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def seeded():
    """Every test starts from the same random state: no test depends on luck."""
    torch.manual_seed(0)
