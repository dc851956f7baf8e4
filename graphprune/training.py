"""Fine-tuning with masks, then reconstruction: the paper's workflow.

``result.masked`` is trainable as it is: its dropped channels are held at
exactly zero by parametrizations (see ``passes/mask.py``), whatever the
training loop, optimizer or DistributedDataParallel do. After training,
:func:`reconstruct` slices it into the compact model and verifies that the
compact model computes what the trained masked model computes::

    result = graphprune.prune(model, x, ratio=0.5)
    masked = result.masked.train()
    opt = torch.optim.SGD(masked.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for images, labels in loader:          # your loop; DDP(masked) works too
        ...
    small = graphprune.reconstruct(masked).compact

The other order (reconstruct first, then fine-tune) needs nothing special:
``result.compact`` is an ordinary trainable module.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn as nn

from .api import PruneResult, build_report
from .errors import ConfigError
from .masks import COMPILE_KEY, CompileRecord
from .numerics import as_inputs
from .pipeline import CompileState, Pipeline


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def reconstruct(
    masked: nn.Module,
    example_inputs: torch.Tensor | tuple | None = None,
    verify: bool | str | None = None,
    fold_constants: bool | None = None,
) -> PruneResult:
    """The compact model of a (fine-tuned) masked model, verified equal to it.

    ``masked`` is ``result.masked`` of :func:`graphprune.prune` (or that model
    wrapped in DistributedDataParallel), trained or not. It is not modified:
    reconstruction works on an eval-mode copy, so BatchNorm uses the running
    statistics training left. ``example_inputs`` (default: the compile's)
    are the inputs verification runs, with 2 random batches of the same
    shape; ``verify`` and ``fold_constants`` override the compile's settings. Returns a
    :class:`~graphprune.api.PruneResult` whose ``compact`` is the small model.
    """
    model = unwrap(masked)
    record = getattr(model, "meta", {}).get(COMPILE_KEY) if hasattr(model, "meta") else None
    if not isinstance(record, CompileRecord):
        raise ConfigError(
            "reconstruct takes the masked model of a graphprune compile (result.masked, or it wrapped in "
            f"DistributedDataParallel); got a {type(model).__name__} without graphprune's compile record"
        )
    overrides = {k: v for k, v in (("verify", verify), ("fold_constants", fold_constants)) if v is not None}
    config = dataclasses.replace(record.config, **overrides)
    inputs = record.example_inputs if example_inputs is None else as_inputs(example_inputs)
    frozen = copy.deepcopy(model).eval()
    state = CompileState(
        model=model, example_inputs=inputs, config=config, graph=frozen, frontend=record.frontend,
        channels=record.plan.channels, groups=record.plan.groups, plan=record.plan, masked=frozen,
    )
    # The compile from the rewrite on, but the masked model is the trained one.
    Pipeline.default().since("rewrite").remove("mask").run(state)
    return PruneResult(state.compact, frozen, state.plan, build_report(state), state)
