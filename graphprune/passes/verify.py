"""Verify pass: the compact model must compute what the masked model computes.

In eval mode: the compact model (the user's class) and the compact graph
(its traced form, what ONNX export writes) against the masked model, on the
example inputs and on seeded random inputs of the same shape and dtype. In
training mode (with BN masking): one forward of the compact and the masked
model on the same random batch, comparing the outputs and the BatchNorm
running statistics afterwards (see :mod:`graphprune.train_check`). The
largest absolute and relative error (relative to the largest magnitude) of
all of it is recorded. Above tolerance it finds the first node whose compact
value differs from the masked value restricted to the kept channels and
raises :class:`~graphprune.errors.VerificationError` naming it (or only
records it, with ``verify="report"``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from ..contract import pick
from ..errors import PipelineError, VerificationError, first_line
from ..numerics import NodeValues, Verification, compare, fresh_copy, input_batches, largest_magnitude
from ..pipeline import CompileState
from ..rewriting import RewriteContext
from ..slicing import masked_graph
from ..train_check import compare_in_training, train_batch


def _layer_outputs(model: nn.Module, paths: set[str], inputs: tuple) -> dict[str, Any]:
    """The output of each layer named in ``paths`` on one run of ``model``."""
    found: dict[str, Any] = {}

    def keep(name: str, out: Any) -> None:  # a copy: an in-place op later must not change it
        found.setdefault(name, out.clone() if isinstance(out, torch.Tensor) else out)

    handles = [module.register_forward_hook(lambda m, a, out, name=name: keep(name, out))
               for name, module in model.named_modules() if name in paths]
    try:
        with torch.no_grad():
            model(*fresh_copy(inputs))
    finally:
        for handle in handles:
            handle.remove()
    return found


def first_divergence(state: CompileState, inputs: tuple) -> str | None:
    """The first node (in graph order) whose compact value differs from the
    masked value restricted to the kept channels: first among the layers of
    the user's-class models, then among every node of the graph forms."""
    calls = [n for n in state.graph.graph.nodes if n.op == "call_module"]
    once = Counter(str(n.target) for n in calls)
    layers = {str(n.target): n for n in calls if once[str(n.target)] == 1}
    try:
        masked = _layer_outputs(state.masked, set(layers), inputs)
        compact = _layer_outputs(state.compact, set(layers), inputs)
    except Exception:
        masked = compact = {}
    rw = RewriteContext(state.compact_graph, state.plan)
    for path, node in layers.items():
        if path in masked and path in compact:
            where = _differs(node, {node.name: masked[path]}, {node.name: compact[path]}, rw, state)
            if where:
                return where
    return _graph_divergence(state, inputs)


def _graph_divergence(state: CompileState, inputs: tuple) -> str | None:
    reference = masked_graph(state.graph, state.plan, state.config.mask_bn)
    masked, compact = NodeValues(reference), NodeValues(state.compact_graph)
    with torch.no_grad():
        try:
            masked.run(*fresh_copy(inputs))
        except Exception as exc:
            return f"the masked model fails: {exc}"
        try:
            compact.run(*fresh_copy(inputs))
        except Exception:
            pass  # compare what ran; the failing node is the first missing one
    rw = RewriteContext(state.compact_graph, state.plan)
    for node in reference.graph.nodes:
        where = _differs(node, masked.values, compact.values, rw, state)
        if where:
            return where
    with torch.no_grad():
        expected = state.masked(*fresh_copy(inputs))
        try:
            model_ok = compare(expected, state.compact(*fresh_copy(inputs)))[1] <= state.config.tolerance
        except Exception as exc:
            return (f"the compact graph agrees; the compact model of the user's class fails to run ({exc}): "
                    "its forward computes something its traced graph holds as a constant (torch.export "
                    "records sizes read from shapes as constants; the fx frontend follows them)")
    if model_ok:
        return ("the compact model agrees, its traced graph (what ONNX export writes) does not: the traced "
                "graph no longer computes what the model computes")
    replaced = f" (rebuilt: {', '.join(state.replaced)})" if state.replaced else ""
    return f"the compact graph agrees; the compact model of the user's class differs{replaced}"


def _differs(node: fx.Node, masked: dict, compact: dict, rw: RewriteContext, state: CompileState) -> str | None:
    if node.op in ("placeholder", "output") or not isinstance(masked.get(node.name), torch.Tensor):
        return None
    if node.name not in compact:
        return f"{node.name} ({node.format_node()}) fails in the compact model"
    m, c = masked[node.name], compact[node.name]
    code = state.channels.codes.get(node.name)
    if not isinstance(c, torch.Tensor) or not isinstance(code, torch.Tensor):
        return None
    expected = m[rw.kept(code).expand(m.shape)]
    if expected.numel() != c.numel():
        return f"{node.name} ({node.format_node()}): shape {tuple(c.shape)}, expected {expected.numel()} elements"
    err, rel = compare(expected, c.reshape(-1))
    return f"{node.name} ({node.format_node()}): max abs error {err:.3g}" if rel > state.config.tolerance else None


class VerifyPass:
    name = "verify"
    requires = ("compact",)  # and the masked model, unless verify=False (which does not build it)
    provides = ("verification",)
    random_batches = 1

    def __call__(self, state: CompileState) -> None:
        config = state.config
        if config.verify is False:
            self.runs(state)
            return
        if state.masked_model() is None:
            raise PipelineError("pass 'verify' needs masked, which no earlier pass provided (add the mask "
                                "pass, or pass verify=False)")
        batches = input_batches(state.example_inputs, config.seed, self.random_batches)
        worst_abs, worst_rel, failing = self.eval_check(state, batches)
        train_rel, train_note = None, None
        if config.mask_bn:
            train_abs, train_rel, train_note = self.train_check(state)
            worst_abs, worst_rel = max(worst_abs, train_abs), max(worst_rel, train_rel or 0.0)
        else:
            train_note = ("training mode not checked: without BN masking a dropped channel's constant comes "
                          "from the batch statistics in training mode, which no fold can follow")
        where = first_divergence(state, failing) if failing is not None else None
        if where is None and train_rel is not None and train_rel > config.tolerance:
            where = f"in training mode, {train_note}"
        result = Verification(worst_abs, worst_rel, config.tolerance, len(batches), where, train_rel, train_note)
        state.verification = result
        if not result.exact:
            self.refuse(state, result)

    @staticmethod
    def runs(state: CompileState) -> None:
        """Unverified, the compact model still runs once on the example (eval
        mode, no grad; one forward): a model that cannot run is never returned."""
        modes = {m: m.training for m in state.compact.modules()}
        state.compact.eval()
        try:
            with torch.no_grad():
                state.compact(*fresh_copy(state.example_inputs))
        except Exception as exc:
            raise VerificationError(
                f"the compact model fails to run on the example inputs ({first_line(exc)}): its forward computes "
                "something its traced graph holds as a constant (torch.export records sizes read from shapes as "
                "constants; the fx frontend follows them). This is a graphprune bug: please report it with the "
                "model.") from exc
        finally:
            for module, training in modes.items():
                module.training = training

    @staticmethod
    def eval_check(state: CompileState, batches: list[tuple]) -> tuple[float, float, tuple | None]:
        worst_abs = worst_rel = largest = 0.0
        failing = None
        paths = state.contract.eval if state.contract is not None else None
        with torch.no_grad():
            for i, batch in enumerate(batches):
                expected = pick(state.masked(*fresh_copy(batch)), paths)
                largest = max(largest, largest_magnitude(expected))
                # the user's-class model on every batch; its graph form (what ONNX export
                # writes; the same arithmetic, so one batch) on the example
                models = [state.compact] + ([state.compact_graph] if state.compact_graph is not None and i == 0 else [])
                for model in models:
                    try:
                        err, rel = compare(expected, pick(model(*fresh_copy(batch)), paths))
                    except Exception as exc:  # the compact model itself is broken
                        err = rel = float("inf")
                        state.notes.append(f"the compact model fails to run: {first_line(exc)}")
                    worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
                    if rel > state.config.tolerance and failing is None:
                        failing = batch
        if largest == 0.0:
            state.notes.append("the masked model's outputs are all zero on the checked inputs, so comparing "
                               "them proves little: give the model its trained weights (a zero-initialised "
                               "head, as in torchvision's ViT, outputs zeros)")
        return worst_abs, worst_rel, failing

    @staticmethod
    def train_check(state: CompileState) -> tuple[float, float | None, str]:
        batch = train_batch(state.example_inputs, state.config.seed + 7)
        paths = state.contract.train if state.contract is not None else None
        try:
            # as the model runs first; float64 decides where float32 round-off may be what differs
            err, rel, what = compare_in_training(state.masked, state.compact, state.plan, batch, state.config.seed,
                                                 paths, dtype=None)
            if rel > state.config.tolerance:
                err, rel, what = compare_in_training(state.masked, state.compact, state.plan, batch,
                                                     state.config.seed, paths, dtype=torch.float64)
        except Exception as exc:
            return 0.0, None, f"training mode not checked: the model does not run in training mode on a " \
                              f"batch like the example ({first_line(exc)})"
        return err, rel, f"largest difference in training mode: {what}"

    @staticmethod
    def refuse(state: CompileState, result: Verification) -> None:
        config = state.config
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
