"""Measure pass: parameters and FLOPs before and after (torch.utils.flop_counter).

FLOPs are counted by ``FlopCounterMode`` on one forward pass of the example
inputs (2 x multiply-accumulates for convolutions and matrix products).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..pipeline import CompileState
from ..tensors import fresh_copy


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_inputs: tuple) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*fresh_copy(example_inputs))
    return int(counter.get_total_flops())


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
