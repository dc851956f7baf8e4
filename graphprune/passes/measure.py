"""Measure pass: parameters and FLOPs before and after (see :mod:`graphprune.flops`).

FLOPs come from the shapes the compiler recorded and the plan: each conv's
and linear layer's count (the formulas of ``torch.utils.flop_counter``)
times the kept fraction of each channel dimension of its weight; no model
runs (``tests/test_zoo.py`` checks the numbers against the counter)."""

from __future__ import annotations

from ..flops import FlopsModel, count_parameters
from ..pipeline import CompileState


class MeasurePass:
    name = "measure"
    requires = ("graph", "channels", "plan", "compact")
    provides = ("measurements",)

    def __call__(self, state: CompileState) -> None:
        # Parameters of the models the user holds (a training-only head counts);
        # FLOPs of one eval-mode forward, counted on the graphs (the same arithmetic).
        flops = FlopsModel.build(state.graph, state.channels, state.example_inputs)
        state.measurements.update(
            params_before=count_parameters(state.model),
            params_after=count_parameters(state.compact),
            flops_before=flops.dense,
            flops_after=round(flops.predict(state.plan.class_kept)),
        )
