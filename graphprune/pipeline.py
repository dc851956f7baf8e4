"""The pass pipeline: an ordered list of passes over one shared state.

A pass is any object with a ``name``, the state fields it ``requires`` and
``provides``, and ``__call__(state)``. The pipeline checks that what a pass
requires is there before running it and times every pass. Users build their
own pipeline from the default one without editing graphprune::

    pipeline = Pipeline.default().insert_after("score", MyScoreTweak())
    result = graphprune.prune(model, x, pipeline=pipeline)
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.fx as fx
import torch.nn as nn

from .config import PruneConfig
from .errors import PipelineError

if TYPE_CHECKING:
    from .analysis import ChannelGraph
    from .budget import BudgetResult
    from .contract import Contract
    from .numerics import Verification
    from .plan import BiasFold, Group, PruningPlan


class Pass(Protocol):
    name: str
    requires: tuple[str, ...]
    provides: tuple[str, ...]

    def __call__(self, state: CompileState) -> None: ...


@dataclass
class CompileState:
    """Everything the passes read and write during one compile.

    ``graph`` is the traced model in eval mode, ``train_graph`` in training
    mode where that computes something else (else None). ``compact_graph``
    is the rewritten graph; ``compact`` and ``masked`` are copies of the
    user's own model (see the apply and mask passes), ``replaced`` the
    modules of ``compact`` whose forward had to be rebuilt, and why. The
    mask pass leaves ``masked_later``, and :meth:`masked_model` builds the
    masked model on first use (a pass that requires it, or the user).

    ``pipeline`` is the pipeline running this state (set by :meth:`Pipeline.run`
    if not given): a pass may ask it for another pass, as the select pass asks
    for the rewrite pass to build the candidates of a budget search."""

    model: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    config: PruneConfig
    graph: fx.GraphModule | None = None
    train_graph: fx.GraphModule | None = None
    frontend: str | None = None
    channels: ChannelGraph | None = None
    contract: Contract | None = None
    groups: list[Group] | None = None
    scores: dict[str, torch.Tensor] | None = None
    plan: PruningPlan | None = None
    budget: BudgetResult | None = None
    compact_graph: fx.GraphModule | None = None
    compact: nn.Module | None = None
    replaced: dict[str, str] = field(default_factory=dict)
    masked: nn.Module | None = None
    masked_later: Callable[[], nn.Module] | None = None
    folds: list[BiasFold] | None = None
    verification: Verification | None = None
    measurements: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: results of a user's own passes (graphprune's passes keep theirs in the fields above)
    extras: dict[str, Any] = field(default_factory=dict)
    pipeline: Pipeline | None = None

    def masked_model(self) -> nn.Module | None:
        """The masked model, built now (and timed as the mask pass) if the mask pass left it for later."""
        if self.masked is None and self.masked_later is not None:
            start = time.perf_counter()
            self.masked, self.masked_later = self.masked_later(), None
            self.timings["mask"] = self.timings.get("mask", 0.0) + time.perf_counter() - start
        return self.masked

    def provided(self, field_name: str) -> bool:
        """Whether an earlier pass provided ``field_name`` (a pass that requires
        the masked model has it built, if it was left for later)."""
        if field_name == "masked":
            return self.masked_model() is not None
        return getattr(self, field_name, None) is not None


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector less often while compiling.

    A compile allocates many short-lived objects next to a large live set
    (the model, its graphs, their metadata), and with the default thresholds
    the collector rescans that live set again and again, so compile time
    grew faster than the graph (``benchmarks/scaling.py``). Reference counting
    still frees almost everything at once, and the old thresholds come back
    afterwards."""
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], 50_000), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


class Pipeline:
    def __init__(self, passes: Iterable[Pass]):
        self.passes: list[Pass] = list(passes)
        names = self.names
        if len(set(names)) != len(names):
            raise PipelineError(f"pass names must be unique; got {names}")

    @classmethod
    def default(cls) -> Pipeline:
        from .passes import default_passes

        return cls(default_passes())

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.passes]

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise PipelineError(f"no pass named {name!r}; passes: {', '.join(self.names)}") from None

    def insert_before(self, name: str, new: Pass) -> Pipeline:
        i = self._index(name)
        return Pipeline(self.passes[:i] + [new] + self.passes[i:])

    def insert_after(self, name: str, new: Pass) -> Pipeline:
        i = self._index(name) + 1
        return Pipeline(self.passes[:i] + [new] + self.passes[i:])

    def replace(self, name: str, new: Pass) -> Pipeline:
        i = self._index(name)
        return Pipeline(self.passes[:i] + [new] + self.passes[i + 1 :])

    def remove(self, name: str) -> Pipeline:
        i = self._index(name)
        return Pipeline(self.passes[:i] + self.passes[i + 1 :])

    # -- slices: partial runs are checked and timed like full ones ------------
    def until(self, name: str) -> Pipeline:
        """The passes up to and including ``name``."""
        return Pipeline(self.passes[: self._index(name) + 1])

    def since(self, name: str) -> Pipeline:
        """The passes from ``name`` on."""
        return Pipeline(self.passes[self._index(name) :])

    def between(self, first: str, last: str) -> Pipeline:
        """The passes from ``first`` to ``last``, both included."""
        i, j = self._index(first), self._index(last)
        if j < i:
            raise PipelineError(f"pass {last!r} runs before {first!r}; passes: {', '.join(self.names)}")
        return Pipeline(self.passes[i : j + 1])

    def get(self, name: str) -> Pass:
        """The pass named ``name``."""
        return self.passes[self._index(name)]

    def run(self, state: CompileState, progress: Callable[[str], None] | None = None) -> CompileState:
        if state.pipeline is None:
            state.pipeline = self
        with fewer_collections():
            return self._run(state, progress)

    def _run(self, state: CompileState, progress: Callable[[str], None] | None) -> CompileState:
        for p in self.passes:
            missing = [f for f in getattr(p, "requires", ()) if not state.provided(f)]
            if missing:
                raise PipelineError(
                    f"pass {p.name!r} needs {', '.join(missing)}, which no earlier pass provided "
                    f"(pipeline: {', '.join(self.names)})"
                )
            if progress is not None:
                progress(p.name)
            start, before = time.perf_counter(), dict(state.timings)
            p(state)
            # work another pass left for later and this one caused (the masked model) is timed as that pass's
            lent = sum(t - before.get(k, 0.0) for k, t in state.timings.items() if k != p.name)
            state.timings[p.name] = time.perf_counter() - start - lent
        return state

    def __repr__(self) -> str:
        return f"Pipeline({' -> '.join(self.names)})"
