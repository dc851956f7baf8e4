"""Apply pass: the compact model is the user's own model, with the plan applied.

A copy of the user's model object (same class, module tree, names,
attributes, methods and Python forward) whose parameters and buffers are
sliced to the kept channels, exactly as the rewrite pass slices the traced
graph (copies of the compact graph's tensors, where it has them: slicing
again would read every weight of the model a second time). Then:

- every module whose tensors were sliced gets its size attributes from them
  (``in_channels``, ``out_channels``, ``groups``, ``num_features``,
  ``in_features``, ...: each module rule's ``fix_module``), and every layer
  the rewritten graph calls gets the attributes its rule gave it there;
- every module whose forward code holds a constant the rewrite changed (a
  split size, a view shape) is replaced, innermost first and only it, by a
  :class:`~graphprune.replace.ReplacedModule` built from its part of the
  rewritten graph; ``state.replaced`` says which and why.

The structure pass has pinned whatever the fx frontend could not rebuild, so
every change found here has a module to replace.
"""

from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from ..compact import CompactLayer
from ..copying import own_tensors, private_copy
from ..errors import GraphpruneError
from ..frameworks import fix_frameworks
from ..masks import RECORD_ATTR
from ..pipeline import CompileState
from ..plan import PruningPlan
from ..replace import module_graph, replace_module
from ..rules import RULES
from ..slicing import compact_tensors
from ..tensors import owner_of
from ..tracing import CALLS_KEY
from .rewrite import CHANGES_KEY

SIZE_TYPES = (int, tuple, list, torch.Size)


def fix_modules(model: nn.Module, owners: set[str]) -> None:
    """Size attributes of the modules named ``owners`` from their sliced tensors."""
    modules = dict(model.named_modules(remove_duplicate=False))
    for name in owners:
        module = modules[name] if name in modules else model.get_submodule(name)
        rule = RULES.module_rule(module)
        if rule is not None and hasattr(rule, "fix_module"):
            rule.fix_module(module)


def copy_layer_attributes(model: nn.Module, graph: fx.GraphModule) -> dict[str, str]:
    """Every layer the rewritten graph calls: its size attributes as the rules
    set them there, and a compact norm where the rules put one there (returns
    those: path -> why)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    layers = dict(graph.named_modules(remove_duplicate=False))
    compact: dict[str, str] = {}
    for node in graph.graph.nodes:
        if node.op != "call_module" or str(node.target) not in modules:
            continue
        source, target = layers[str(node.target)], modules[str(node.target)]
        if isinstance(source, CompactLayer) and not isinstance(target, CompactLayer):
            parent, _, name = str(node.target).rpartition(".")
            model.get_submodule(parent)._modules[name] = source.rebind(target)
            compact[str(node.target)] = f"{type(target).__name__} made compact: {source.why}"
            continue
        for key, value in source.__dict__.items():
            if (isinstance(value, SIZE_TYPES) and not isinstance(value, bool) and key in target.__dict__
                    and target.__dict__[key] != value):
                target.__dict__[key] = value
    return compact


def replace_changed(model: nn.Module, graph: fx.GraphModule) -> tuple[nn.Module, dict[str, str]]:
    """Replace each module whose forward holds a node the rewrite changed;
    returns the model (itself replaced, if its own forward changed) and path -> why."""
    changes: dict[str, str] = graph.meta.get(CHANGES_KEY, {})
    calls = graph.meta.get(CALLS_KEY) or []
    by_key = {c.key: c for c in calls}
    nodes = {n.name: n for n in graph.graph.nodes}
    owners: dict[str, list[str]] = {}
    for name, what in changes.items():
        stack = nodes[name].meta.get("nn_module_stack") or {}
        key = next(reversed(stack), "")  # "": the model's own forward
        if key not in by_key:
            rule = RULES.module_rule(model.get_submodule(stack[key][0])) if key else None
            if rule is not None and hasattr(rule, "fix_module"):
                continue  # an exported graph's layer: its attributes follow its tensors
            raise GraphpruneError(f"the rewrite changed {what} (node {name}) in code graphprune cannot rebuild, "
                                  "and the structure pass did not pin it. This is a graphprune bug: please "
                                  "report it with the model")
        owners.setdefault(key, []).append(f"{what} (node {name})")
    replaced: dict[str, str] = {}
    for key in sorted(owners, key=lambda k: -by_key[k].path.count(".")):  # innermost first
        call = by_key[key]
        module = model.get_submodule(call.path)
        reason = f"{type(module).__name__}.forward: " + "; ".join(owners[key])
        new = replace_module(module, module_graph(graph.graph, call, calls, module), reason, keep_class=not call.path)
        if not call.path:
            model = new
        else:
            parent, _, attr = call.path.rpartition(".")
            model.get_submodule(parent)._modules[attr] = new
        replaced[call.path] = reason
    return model, replaced


class ApplyPass:
    name = "apply"
    requires = ("plan", "compact_graph")
    provides = ("compact",)

    def __call__(self, state: CompileState) -> None:
        state.compact, state.replaced = self.build(state, state.plan, state.compact_graph)

    def build(self, state: CompileState, plan: PruningPlan,
              graph: fx.GraphModule) -> tuple[nn.Module, dict[str, str]]:
        compact = private_copy(state.model)
        compact.__dict__.pop(RECORD_ATTR, None)  # a masked model's record is not the compact model's
        sliced = compact_tensors(compact, plan, state.config.mask_bn, source=graph)
        own_tensors(compact, state.model)
        fix_modules(compact, {owner_of(target) for target, _ in sliced})
        norms = copy_layer_attributes(compact, graph)
        compact, replaced = replace_changed(compact, graph)
        fix_frameworks(compact, state.example_inputs)
        return compact.eval(), {**norms, **replaced}
