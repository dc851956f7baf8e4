"""Inputs and comparisons: the numerics that verification, folding, export
and the budget search share.

- :func:`as_inputs` turns what a user passes (one tensor or a tuple) into a tuple;
- :func:`fresh_copy` clones inputs before a run (a model may write them in place);
- :func:`input_batches` gives the example inputs and seeded random ones like them;
- :func:`compare` is the largest absolute and relative error between two
  outputs, and :class:`Verification` what a check of compact against masked found;
- :class:`NodeValues` runs a graph and keeps every node's value (what ran, where a node fails).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves


class NodeValues(fx.Interpreter):
    """Runs a graph, keeping each node's value in ``values`` (node name -> value)."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def as_inputs(example_inputs: torch.Tensor | tuple | list) -> tuple:
    """One tensor becomes a 1-tuple; a tuple or list becomes a tuple."""
    return (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)


def fresh_copy(inputs: tuple) -> tuple:
    """The inputs with every tensor cloned: a model may write its input in
    place (``x.relu_()``), which must change neither the caller's tensors nor
    the next run that reads them."""
    return tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs)


def random_like(example: tuple, generator: torch.Generator) -> tuple:
    """Standard-normal tensors shaped like the floating-point inputs; other inputs as they are."""
    out = []
    for x in example:
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            out.append(torch.randn(x.shape, generator=generator, dtype=x.dtype))
        else:
            out.append(x)
    return tuple(out)


def input_batches(example: tuple, seed: int, random_batches: int) -> list[tuple]:
    """The example inputs, then seeded random inputs of the same shapes."""
    generator = torch.Generator().manual_seed(seed)
    return [tuple(example)] + [random_like(example, generator) for _ in range(random_batches)]


def compare(a: Any, b: Any, floor: float = 1e-12) -> tuple[float, float]:
    """Max absolute error and max error relative to the largest |a| (at least
    ``floor``), over every tensor of two output structures (infinite where
    they do not match)."""
    la, lb = tree_leaves(a), tree_leaves(b)
    if len(la) != len(lb):
        return float("inf"), float("inf")
    worst_abs, worst_rel = 0.0, 0.0
    for x, y in zip(la, lb):
        if not isinstance(x, torch.Tensor):
            continue
        if not isinstance(y, torch.Tensor) or x.shape != y.shape:
            return float("inf"), float("inf")
        x, y = x.detach().double(), y.detach().double()
        if not torch.isfinite(x).all() or not torch.isfinite(y).all():
            if not torch.equal(torch.nan_to_num(x), torch.nan_to_num(y)):
                return float("inf"), float("inf")
            x, y = torch.nan_to_num(x), torch.nan_to_num(y)
        err = float((x - y).abs().max()) if x.numel() else 0.0
        scale = float(x.abs().max()) if x.numel() else 0.0
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / max(scale, floor))
    return worst_abs, worst_rel


def largest_magnitude(tree: Any) -> float:
    """The largest |value| over every floating tensor of an output structure."""
    sizes = [float(t.detach().abs().max()) for t in tree_leaves(tree)
             if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    return max(sizes, default=0.0)


@dataclass(frozen=True)
class Verification:
    """What comparing the compact model with the masked one found.

    ``max_abs_error`` / ``max_rel_error``: the largest over every check (eval
    mode on ``inputs_checked`` batches, and training mode); ``train_max_rel_error``:
    the training-mode check alone (None where it was not run; ``train_note``
    says why, or what differed most)."""

    max_abs_error: float
    max_rel_error: float
    tolerance: float
    inputs_checked: int
    first_divergence: str | None = None
    train_max_rel_error: float | None = None
    train_note: str | None = None

    @property
    def exact(self) -> bool:
        return self.max_rel_error <= self.tolerance

    def __str__(self) -> str:
        verdict = "equal" if self.exact else "NOT equal"
        modes = "eval and training mode" if self.train_max_rel_error is not None else "eval mode"
        where = f", first diverging node: {self.first_divergence}" if self.first_divergence else ""
        return (
            f"compact vs masked: {verdict} in {modes} (max abs error {self.max_abs_error:.3g}, "
            f"max rel error {self.max_rel_error:.3g}, tolerance {self.tolerance:g}){where}"
        )
