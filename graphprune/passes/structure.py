"""Structure pass: pin the channels whose pruning would change a constant in
code graphprune cannot rebuild.

The compact model is the user's own model, sliced (see the apply pass). Where
a module's forward code holds a channel count (a split size, a view shape, a
slice bound), pruning changes that constant, and the apply pass replaces the
module by its own rewritten forward. That needs the module's call boundaries
(the fx frontend records them), one call only (one replacement cannot serve
two sets of channels), the same code in training and eval mode, and a
forward that stands on its own. Where that fails, the channels that would
change the constant are pinned, before any are chosen, with the reason in
the plan.

Which constants may change is found by dry runs of the rewrite on each graph
(put back as it was afterwards): one that drops every prunable channel, one that drops a seeded
half of them (so that ``chunk(2)`` of two halves that both lose everything
still shows up as a change).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from .. import ids
from ..pipeline import CompileState
from ..plan import PruningPlan
from ..replace import ReplaceError, module_graph
from ..rewriting import sized_tensors
from ..rules import RULES
from ..rules.base import tensor_args
from ..tensors import owner_of
from ..tracing import CALLS_KEY
from .rewrite import changes_for


def probes(state: CompileState) -> list[PruningPlan]:
    channels, config = state.channels, state.config
    free = ~channels.pinned
    half = torch.rand(channels.num_classes, generator=torch.Generator().manual_seed(0)) < 0.5
    plans = []
    for kept in (channels.pinned.clone(), channels.pinned | (free & half)):
        plans.append(PruningPlan(channels, [], kept, ~kept[channels.class_of], config.mode, config.coupling))
    return plans


def shape_of(graph: fx.Graph) -> list[tuple]:
    """A graph's nodes as (op, target, args with nodes by position): equal for equal code."""
    index = {n: i for i, n in enumerate(graph.nodes)}
    return [(n.op, str(n.target), str(fx.node.map_arg((n.args, n.kwargs), lambda a: index[a]))) for n in graph.nodes]


class StructurePass:
    name = "structure"
    requires = ("graph", "channels")
    provides: tuple[str, ...] = ()

    def __call__(self, state: CompileState) -> None:
        graphs = {"eval": state.graph}
        if state.train_graph is not None:
            graphs["train"] = state.train_graph
        self.problems: dict[str, str | None] = {}
        rebuilt: set[str] = set()
        for mode, gm in graphs.items():
            changed: dict[str, str] = {}
            for probe in probes(state):
                changed = {**changes_for(gm, probe, mode), **changed}
            nodes = {n.name: n for n in gm.graph.nodes}
            codes = state.channels.graphs[mode].codes
            for name, what in changed.items():
                where, path, problem = self.problem(state, nodes[name], mode, graphs)
                if problem is None:
                    rebuilt.add(path)
                    continue
                reason = (f"pruning would change a constant in the forward of {where} ({what}, node {name}), "
                          f"which graphprune cannot rebuild: {problem}")
                for arg in tensor_args(nodes[name]) + sized_tensors(nodes[name]):
                    code = codes.get(arg.name)
                    if isinstance(code, torch.Tensor):
                        state.channels.pin(ids.raw_ids(code), reason)
                # its own tensors keep their sizes too: its forward (not rebuilt) may check them against
                # its attributes (nn.MultiheadAttention's embed_dim against the width of its input)
                self.pin_own_tensors(state, path, reason)
        self.pin_decomposed_layers(state, graphs, rebuilt)

    @staticmethod
    def pin_own_tensors(state: CompileState, path: str, reason: str) -> None:
        for slot in state.channels.slots:
            if path and owner_of(slot.target) == path:
                state.channels.pin(slot.ids, reason)

    def pin_decomposed_layers(self, state: CompileState, graphs: dict[str, fx.GraphModule], rebuilt: set[str]) -> None:
        """A layer whose rule sets its attributes in the graph's call of it
        (nn.MultiheadAttention's embed_dim), whose forward ran but that the
        graph does not call as one (the export frontend decomposes it), and
        that is not rebuilt either: its forward checks its attributes against
        its tensors, so its own tensors keep their sizes."""
        nodes = [n for gm in graphs.values() for n in gm.graph.nodes]
        called = {str(n.target) for n in nodes if n.op == "call_module"}
        ran = {entry[0] for n in nodes for entry in (n.meta.get("nn_module_stack") or {}).values()}
        for path, module in state.model.named_modules():
            rule = RULES.module_rule(module)
            if (rule is None or hasattr(rule, "fix_module") or not path or path not in ran or path in called
                    or path in rebuilt):
                continue  # (a layer whose tensors a function uses, its forward never run, is free)
            self.pin_own_tensors(state, path, f"{type(module).__name__} {path!r} is not one call in the traced "
                                 "graph (the export frontend decomposes it), and its size attributes cannot "
                                 "follow its sliced tensors")

    def problem(self, state: CompileState, node: fx.Node, mode: str,
                graphs: dict[str, fx.GraphModule]) -> tuple[str, str, str | None]:
        """(the module whose forward holds ``node``, its path, why it cannot be replaced or None)."""
        stack = node.meta.get("nn_module_stack") or {}
        key = list(stack)[-1] if stack else ""  # "": the model's own forward
        path = stack[key][0] if stack else ""
        module = state.model.get_submodule(path)
        where = f"{type(module).__name__} {path!r}" if path else f"the model ({type(module).__name__})"
        if (mode, key) not in self.problems:
            self.problems[(mode, key)] = self._problem(module, path, key, mode, graphs)
        return where, path, self.problems[(mode, key)]

    @staticmethod
    def _problem(module: torch.nn.Module, path: str, key: str, mode: str,
                 graphs: dict[str, fx.GraphModule]) -> str | None:
        rule = RULES.module_rule(module)
        if rule is not None and hasattr(rule, "fix_module"):
            return None  # a layer whose attributes follow its tensors (an exported graph's conv)
        calls = graphs[mode].meta.get(CALLS_KEY, [])
        if not any(c.key == key for c in calls):
            return ("its call boundaries are not known (an exported graph records them only for modules that "
                    "take one tensor and return one, and not for the model itself; the fx frontend records all)")
        count = sum(c.path == path for c in calls)
        if count > 1:
            return f"it is called {count} times, and one rebuilt forward cannot serve different channels"
        shapes = {}
        for other, gm in graphs.items():
            found = [c for c in gm.meta.get(CALLS_KEY, []) if c.key == key]
            if not found:
                return f"it runs in {mode} mode only"
            try:
                shapes[other] = shape_of(module_graph(gm.graph, found[0], gm.meta[CALLS_KEY], module))
            except ReplaceError as exc:
                return str(exc)
        if len({str(s) for s in shapes.values()}) > 1:
            return "its forward computes something else in training mode than in eval mode"
        return None
