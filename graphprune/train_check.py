"""Running two models in training mode on the same batch, to compare them.

In training mode BatchNorm normalises with the batch's statistics and
updates its running ones, and heads return their training outputs (a
detector's feature maps, Inception's auxiliary logits). The compact model
must do what the masked model does there too: the same outputs and, sliced
to the kept channels, the same running statistics afterwards.

Dropout is switched off for the run (it draws different random numbers for
tensors of different widths, so no two models of different widths could
agree); every other random draw (stochastic depth draws per sample) sees the
same seed in both runs. The run is in float32 first, as the model runs;
where that disagrees it is run again in float64, which decides: BatchNorm in
training mode divides by the standard deviation of a few values per channel
(a batch of 2 at 1x1 resolution deep in a network), which can turn float32
round-off into errors far above any tolerance; in float64 what is left is the
arithmetic, which is what the check is about. float32 -> float64 -> float32 is
exact, so the models' tensors, modes, buffers and the global random state are
as they were afterwards. (float64 convolutions are several times slower on the
CPU: on convnext_tiny at 224 the float64 check took 1.8 s, the float32 one
0.3 s, so the float64 run is only the arbiter.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .contract import pick
from .numerics import compare, fresh_copy
from .plan import PruningPlan

DROPOUT_FUNCTIONS = ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout")
TORCH_DROPOUTS = ("dropout", "alpha_dropout", "feature_alpha_dropout", "feature_dropout")


def _identity(input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return input


@contextlib.contextmanager
def without_dropout() -> Iterator[None]:
    saved = [(F, name, getattr(F, name)) for name in DROPOUT_FUNCTIONS if hasattr(F, name)]
    saved += [(torch, name, getattr(torch, name)) for name in TORCH_DROPOUTS if hasattr(torch, name)]
    try:
        for owner, name, _ in saved:
            setattr(owner, name, _identity)
        yield
    finally:
        for owner, name, function in saved:
            setattr(owner, name, function)


@contextlib.contextmanager
def training_run(*models: nn.Module, dtype: torch.dtype | None = torch.float64) -> Iterator[None]:
    """The models in training mode (and in ``dtype``, where given), without
    dropout, under no_grad; their modes, dtypes and buffers restored afterwards."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    # a forward under no_grad changes no parameter, only buffers (running statistics); a change of dtype
    # replaces every floating tensor's data
    changed = (lambda model: (*model.parameters(), *model.buffers())) if dtype is not None else \
        (lambda model: tuple(model.buffers()))
    tensors = list({id(t): t for model in models for t in changed(model)}.values())
    saved = [(t, t.detach().clone()) for t in tensors]
    try:
        with torch.no_grad():
            for t in tensors:
                if dtype is not None and t.is_floating_point():
                    t.data = t.data.to(dtype)
        for model in models:
            model.train()
        with torch.no_grad(), without_dropout():
            yield
    finally:
        with torch.no_grad():
            for t, copy in saved:
                t.data = copy
        for module, training in modes:
            module.training = training


def train_batch(example: tuple, seed: int) -> tuple:
    """Random inputs like the example's, with a batch of at least 2
    (BatchNorm in training mode needs more than one value per channel)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in example:
        if isinstance(x, torch.Tensor) and x.ndim > 0:
            shape = (max(2, x.shape[0]), *x.shape[1:])
            out.append(torch.randn(shape, generator=g, dtype=torch.float64) if x.is_floating_point()
                       else x[torch.arange(shape[0]) % x.shape[0]])
        else:
            out.append(x)
    return tuple(out)


def sliced_buffer(plan: PruningPlan, kept: dict[tuple[str, int], torch.Tensor], name: str,
                  tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (a buffer of the masked model) at the compact model's indices."""
    for dim in range(tensor.ndim):
        index = kept.get((name, dim))
        if index is not None:
            tensor = tensor.index_select(dim, index)
    return tensor


def compare_in_training(masked: nn.Module, compact: nn.Module, plan: PruningPlan, batch: tuple,
                        seed: int, paths: tuple | None = None,
                        dtype: torch.dtype | None = torch.float64) -> tuple[float, float, str]:
    """(max abs, max rel error, what differed most) of one training-mode
    forward of both models on ``batch``: the outputs (those at ``paths``, if
    given: the training-mode output contract), then every buffer. In
    ``dtype`` (None: as the models are; the batch is cast to the models' dtype)."""
    kept = plan.cut_slots()
    if dtype is None:
        like = next((t for t in (*masked.parameters(), *masked.buffers()) if t.is_floating_point()), None)
        batch = tuple(x.to(like.dtype) if like is not None and isinstance(x, torch.Tensor) and x.is_floating_point()
                      else x for x in batch)
    with training_run(masked, compact, dtype=dtype), torch.random.fork_rng():
        torch.manual_seed(seed)
        expected = masked(*fresh_copy(batch))
        torch.manual_seed(seed)
        got = compact(*fresh_copy(batch))
        worst = (*compare(pick(expected, paths), pick(got, paths)), "outputs")
        theirs = dict(masked.named_buffers())
        for name, buffer in compact.named_buffers():
            if name in theirs and buffer.is_floating_point():
                # Running statistics near zero (a mean of a channel that is almost
                # dead) carry round-off far above their size; what they do to an
                # output is relative to sqrt(var + eps), so 1e-3 is their floor.
                err, rel = compare(sliced_buffer(plan, kept, name, theirs[name]), buffer, floor=1e-3)
                if rel > worst[1]:
                    worst = (err, rel, f"buffer {name}")
    return worst
