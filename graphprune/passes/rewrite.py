"""Rewrite pass: the compact graph, physically smaller.

Starts from the traced graph, slices every parameter and buffer indexed by
channels to the kept channels (zeroing what a layer dropped but the union
keeps: the compact model must compute what the masked model computes), then
lets each node's op rule fix what the node encodes about channel counts
(module attributes such as ``in_channels`` and ``groups``; split sizes, view
shapes and slice bounds in the graph).

Every node whose arguments the rules changed is recorded in
``compact_graph.meta[CHANGES_KEY]`` (node name -> what changed): a change
in a module's forward code is what makes the apply pass replace that module.
"""

from __future__ import annotations

from typing import Any

import torch.fx as fx

from ..copying import light_copy, own_tensors
from ..pipeline import CompileState
from ..plan import PruningPlan
from ..rewriting import ARITHMETIC, RewriteContext
from ..rules import RULES
from ..rules.base import TensorMeta, size_read, value
from ..slicing import compact_tensors

#: compact_graph.meta key: node name -> what the rewrite changed in it
CHANGES_KEY = "graphprune.changes"


def _text(value: Any) -> str:
    if isinstance(value, fx.Node):
        return value.name
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_text(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, slice):
        return ":".join("" if v is None else _text(v) for v in (value.start, value.stop, value.step)).rstrip(":")
    return repr(value)


def call_text(target: Any, args: tuple, kwargs: dict) -> str:
    """``split(x, [13, 19], 1)``: a call as a user reads it in a report."""
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    parts = [_text(a) for a in args] + [f"{k}={_text(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


def _canonical(value: Any) -> Any:
    """A call's arguments with lists as tuples: ``[b, 64, -1]`` and ``(b, 64, -1)`` are one call."""
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


def rewrite_nodes(gm: fx.GraphModule, plan: PruningPlan, graph: str = "eval",
                  modules_too: bool = True) -> dict[str, str]:
    """Let each node's rule fix its channel counts for ``plan``; returns the
    nodes of ``gm`` whose call changed (not a module's attributes), with
    what changed. ``modules_too=False``: only call_function/call_method nodes,
    and no node erased (see :func:`changes_for`)."""
    modules = dict(gm.named_modules(remove_duplicate=False))
    rw = RewriteContext(gm, plan, graph)
    unknown = plan.channels.graphs[graph].unknown
    changed: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        if not node.op.startswith("call_") or (node.op == "call_module" and not modules_too):
            continue
        rule = RULES.lookup(node, gm, modules)
        if rule is None or not hasattr(rule, "rewrite") or node.name in unknown:
            continue  # no rule, or pinned: nothing about it changes
        before = (node.target, node.args, node.kwargs)
        rule.rewrite(node, rw)
        if node.op != "call_module" and _canonical((node.target, node.args, node.kwargs)) != _canonical(before):
            changed[node.name] = f"{call_text(*before)} becomes {call_text(node.target, node.args, node.kwargs)}"
    if changed and modules_too:
        drop_unused_size_arithmetic(gm.graph)
    return changed


def changes_for(gm: fx.GraphModule, plan: PruningPlan, graph: str = "eval") -> dict[str, str]:
    """What :func:`rewrite_nodes` would change in ``gm``'s calls for ``plan``
    (no module touched), ``gm`` left as it was: the rules change a call's op,
    target, args and kwargs only, so those are put back (no copy of the graph)."""
    saved = [(n, n.op, n.target, n.args, n.kwargs) for n in gm.graph.nodes
             if n.op in ("call_function", "call_method")]
    try:
        return rewrite_nodes(gm, plan, graph, modules_too=False)
    finally:
        for node, op, target, args, kwargs in saved:
            node.op, node.target = op, target
            node.args, node.kwargs = args, kwargs


def drop_unused_size_arithmetic(graph: fx.Graph) -> None:
    """Erase the size arithmetic no node reads any more (``(c // h) ** -0.5``
    once its value became the original's literal): in the compact model it
    would compute from the compact sizes, which may not even be valid (``0 ** -0.5``)."""
    for node in reversed(list(graph.nodes)):
        if (not node.users and node.op in ("call_function", "call_method")
                and (node.target in ARITHMETIC or size_read(node) is not None)
                and not isinstance(value(node), TensorMeta)):
            graph.erase_node(node)


class RewritePass:
    name = "rewrite"
    requires = ("graph", "plan")
    provides = ("compact_graph",)

    def __call__(self, state: CompileState) -> None:
        state.compact_graph = self.build(state, state.plan)

    def build(self, state: CompileState, plan: PruningPlan) -> fx.GraphModule:
        """The compact graph of the traced graph under ``plan`` (the budget
        search builds its candidates with this too)."""
        compact = light_copy(state.graph)
        compact_tensors(compact, plan, state.config.mask_bn)
        own_tensors(compact, state.graph)
        compact.meta[CHANGES_KEY] = rewrite_nodes(compact, plan)
        compact.graph.lint()
        compact.recompile()
        return compact.eval()
