"""Verify pass: the compact model must compute what the masked model computes.

Runs both on the example inputs and on seeded random inputs of the same shape
and dtype, and records the largest absolute and relative error (relative to
the largest output magnitude). Above tolerance it finds the first node whose
compact output differs from the masked output restricted to the kept channels
and raises :class:`~graphprune.errors.VerificationError` naming it (or only
records it, with ``verify="report"``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx

from ..errors import VerificationError
from ..numerics import Verification, compare, fresh_copy, input_batches
from ..pipeline import CompileState
from ..rewriting import RewriteContext


class _Capture(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def first_divergence(state: CompileState, inputs: tuple) -> str | None:
    """The first node (in graph order) whose compact value differs from the
    masked value restricted to the kept channels."""
    masked, compact = _Capture(state.masked), _Capture(state.compact)
    with torch.no_grad():
        try:
            masked.run(*fresh_copy(inputs))
        except Exception as exc:
            return f"the masked model fails: {exc}"
        try:
            compact.run(*fresh_copy(inputs))
        except Exception:
            pass  # compare what ran; the failing node is the first missing one
    rw = RewriteContext(state.compact, state.plan)
    tol = state.config.tolerance
    for node in state.masked.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        m = masked.values.get(node.name)
        if not isinstance(m, torch.Tensor):
            continue
        if node.name not in compact.values:
            return f"{node.name} ({node.format_node()}) fails in the compact model"
        c = compact.values[node.name]
        code = state.channels.codes.get(node.name)
        if not isinstance(c, torch.Tensor) or not isinstance(code, torch.Tensor):
            continue
        keep = rw.kept(code).expand(m.shape)
        expected = m[keep]
        if expected.numel() != c.numel():
            return f"{node.name} ({node.format_node()}): shape {tuple(c.shape)}, expected {expected.numel()} elements"
        err, rel = compare(expected, c.reshape(-1))
        if rel > tol:
            return f"{node.name} ({node.format_node()}): max abs error {err:.3g}"
    return None


class VerifyPass:
    name = "verify"
    requires = ("masked", "compact")
    provides = ("verification",)
    random_batches = 2

    def __call__(self, state: CompileState) -> None:
        config = state.config
        if config.verify is False:
            return
        batches = input_batches(state.example_inputs, config.seed, self.random_batches)
        worst_abs = worst_rel = 0.0
        failing = None
        with torch.no_grad():
            for batch in batches:
                try:
                    expected = state.masked(*fresh_copy(batch))
                    got = state.compact(*fresh_copy(batch))
                    err, rel = compare(expected, got)
                except Exception as exc:  # the compact graph itself is broken
                    err = rel = float("inf")
                    state.notes.append(f"the compact model fails to run: {exc}")
                worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
                if rel > config.tolerance and failing is None:
                    failing = batch
        where = first_divergence(state, failing) if failing is not None else None
        result = Verification(worst_abs, worst_rel, config.tolerance, len(batches), where)
        state.verification = result
        if result.exact:
            return
        if config.coupling == "intersection":
            state.notes.append(
                "coupling='intersection' dropped channels that other layers writing the same "
                "channels kept, so the compact model is NOT equal to the masked model "
                "(the paper's AND failure); use coupling='union' for a lossless model"
            )
        if config.verify is True:
            if config.coupling == "intersection":
                hint = " Pass coupling='union' for a lossless result, or verify='report' to study the mismatch."
            elif not config.mask_bn:
                why = " ".join(n[0].upper() + n[1:] + "." for n in state.notes if n.startswith("not exact"))
                hint = (f" {why or 'Without BN masking, dropped channels are constants.'} Pass mask_bn=True "
                        "for a lossless result, or verify='report' to accept the difference.")
            else:
                hint = " This is a graphprune bug: please report it with the model."
            raise VerificationError(f"{result}.{hint}", result)
        state.notes.append(str(result))
