"""Measure pass: parameters and FLOPs before and after (see :mod:`graphprune.flops`)."""

from __future__ import annotations

from ..flops import count_flops, count_parameters
from ..pipeline import CompileState


class MeasurePass:
    name = "measure"
    requires = ("graph", "compact")
    provides = ("measurements",)

    def __call__(self, state: CompileState) -> None:
        state.measurements.update(
            params_before=count_parameters(state.graph),
            params_after=count_parameters(state.compact),
            flops_before=count_flops(state.graph, state.example_inputs),
            flops_after=count_flops(state.compact, state.example_inputs),
        )
