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

import dataclasses

import torch
import torch.nn as nn

from .api import PruneResult, build_report
from .copying import owned_copy
from .errors import ConfigError
from .masks import RECORD_ATTR, CompileRecord, bake, compile_record
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
    are the inputs verification runs, with a random batch of the same
    shape; ``verify`` and ``fold_constants`` override the compile's settings. Returns a
    :class:`~graphprune.api.PruneResult` whose ``compact`` is the small model.
    """
    model = unwrap(masked)
    record = compile_record(model)
    if record is None:
        raise ConfigError(
            "reconstruct takes the masked model of a graphprune compile (result.masked, or it wrapped in "
            f"DistributedDataParallel); got a {type(model).__name__} without graphprune's compile record"
        )
    overrides = {k: v for k, v in (("verify", verify), ("fold_constants", fold_constants)) if v is not None}
    config = dataclasses.replace(record.config, frontend=record.frontend or record.config.frontend, **overrides)
    inputs = record.example_inputs if example_inputs is None else as_inputs(example_inputs)
    trained = owned_copy(model)
    trained.__dict__.pop(RECORD_ATTR, None)
    bake(trained)  # plain tensors, the dropped entries exactly zero
    trained.eval()
    state = CompileState(model=trained, example_inputs=inputs, config=config)
    pipeline = Pipeline.default()
    pipeline.until("shapes").run(state)  # traced again: the same code gives the same node names
    check_same_graphs(state, record)
    state.channels, state.groups, state.plan, state.masked, state.contract = (
        record.plan.channels, record.plan.groups, record.plan, trained, record.contract)
    # The compile from the rewrite on, but the masked model is the trained one.
    pipeline.since("rewrite").remove("mask").run(state)
    return PruneResult(state.compact, state.plan, build_report(state), state)


def check_same_graphs(state: CompileState, record: CompileRecord) -> None:
    """The model traced now must be the one the plan was made for."""
    graphs = {"eval": state.graph, "train": state.train_graph}
    for mode, recorded in record.plan.channels.graphs.items():
        gm = graphs.get(mode)
        names = {n.name for n in gm.graph.nodes} if gm is not None else set()
        if names != set(recorded.codes):
            raise ConfigError(
                f"the masked model no longer traces to the graph it was pruned from ({mode} mode): its code "
                "or structure changed after pruning, so its plan does not apply; prune the model again"
            )
