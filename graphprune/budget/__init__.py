"""Pruning to a budget: where to cut global mode's ranking to meet a FLOPs or latency target.

Global mode ranks every prunable coupled channel once, lowest normalised
score first; pruning to a budget is choosing *how many* of them to drop.

- **FLOPs** (``target_flops``): a :class:`~graphprune.flops.FlopsModel`
  predicts the compact model's FLOPs from a kept-channel mask without building
  it. :class:`FlopsSearch` bisects the number of ranked channels to drop on the
  prediction and, where ``round_to`` makes one step of the cut too coarse,
  drops single rounding blocks from the cut just above the goal.
  Built from the recorded shapes, the prediction is the count (the counter's
  formulas; ``tests/test_zoo.py`` checks them against the counter). Where the
  graph has matrix products without a formula, the model comes from one run
  under the counter, and :func:`fit_flops` confirms the choice with a real
  count of the compact model that ``build`` makes, shifting the goal by what
  the model missed and searching again where the two disagree.
- **Latency** (``target_latency``): :func:`fit_latency` searches a FLOPs
  fraction whose compact model, exported to ONNX and timed on ONNX Runtime,
  takes the target fraction of the dense model's time. Each candidate is
  timed in interleaved rounds with the dense model (medians), so a load
  change on the machine hits both; the FLOPs search is the inner loop.

Both respect what the ranking respects (pinned and ignored channels,
``min_channels``) and what the select pass does after the cut (``round_to``,
one channel per tensor): every candidate cut is finished by the select pass's
own rules before it is costed. Candidates are built by ``build``, a function
the select pass hands in (it uses the pipeline's own rewrite pass), so this
module imports no pass. A target that cannot be reached is pruned as far as
allowed and says so in the notes.
"""

from .flops_search import (
    FLOPS_CONFIRMATIONS,
    FLOPS_TOLERANCE,
    Finish,
    FlopsSearch,
    Ranking,
    bisect_cut,
    fit_flops,
)
from .latency_search import LatencySearch, fit_latency
from .result import BudgetResult, Build

__all__ = [
    "FLOPS_CONFIRMATIONS", "FLOPS_TOLERANCE", "Build", "BudgetResult", "Finish", "FlopsSearch", "LatencySearch",
    "Ranking", "bisect_cut", "fit_flops", "fit_latency",
]
