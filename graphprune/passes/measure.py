"""Measure pass: parameters and FLOPs before and after (see :mod:`graphprune.flops`)."""

from __future__ import annotations

from ..flops import count_flops, count_parameters
from ..pipeline import CompileState


class MeasurePass:
    name = "measure"
    requires = ("graph", "compact", "compact_graph")
    provides = ("measurements",)

    def __call__(self, state: CompileState) -> None:
        # Parameters of the models the user holds (a training-only head counts);
        # FLOPs of one eval-mode forward, counted on the graphs (the same arithmetic).
        state.measurements.update(
            params_before=count_parameters(state.model),
            params_after=count_parameters(state.compact),
            flops_before=count_flops(state.graph, state.example_inputs),
            flops_after=count_flops(state.compact_graph, state.example_inputs),
        )
