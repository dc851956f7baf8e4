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
every change found here has a module to replace. With the export frontend a
forward may compute sizes the graph holds as constants (see
:func:`rebuild_diverging`): the modules where the compact model and the
compact graph part ways are rebuilt from the graph too.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_map

from ..compact import CompactLayer
from ..copying import own_tensors, private_copy
from ..errors import GraphpruneError
from ..frameworks import fix_frameworks
from ..masks import RECORD_ATTR
from ..numerics import NodeValues, compare, fresh_copy
from ..pipeline import CompileState
from ..plan import PruningPlan
from ..replace import ReplacedModule, ReplaceError, module_graph, replace_module
from ..rules import RULES
from ..slicing import compact_tensors
from ..tensors import owner_of
from ..tracing import CALLS_KEY, ModuleCall, NodeRef
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
        if state.frontend == "export":
            replaced.update(rebuild_diverging(compact.eval(), graph, state.example_inputs, state.config.tolerance))
            state.notes.extend(without_dropout(state.model, replaced))
        fix_frameworks(compact, state.example_inputs)
        return compact.eval(), {**norms, **replaced}


def without_dropout(model: nn.Module, rebuilt: dict[str, str]) -> list[str]:
    """Notes for the blocks rebuilt from an exported graph that hold dropout:
    torch.export writes the eval-mode graph, which has none."""
    notes = []
    for path in rebuilt:
        module = model.get_submodule(path) if path else model
        if any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules()):
            notes.append(f"{path or 'the model'} was rebuilt from the exported graph, which torch.export writes in "
                         "eval mode: in training mode it runs without its dropout (the fx frontend keeps it)")
    return notes


REBUILT_WHY = ("its forward, run on the compact model's narrower tensors, computes something the exported graph "
               "holds as a constant (torch.export keeps sizes read from shapes as constants)")


def rebuild_diverging(model: nn.Module, graph: fx.GraphModule, inputs: tuple, tolerance: float) -> dict[str, str]:
    """Export frontend: torch.export holds what a forward computed from sizes
    (``c // heads`` of ``b, n, c = x.shape``) as constants, so no rewrite can
    see where the user's forward, run on narrowed tensors, computes another
    value than the graph holds. So the compact model runs once beside the
    compact graph, on the example inputs (eval mode): a module (called once,
    its call recorded, not a layer with a rule) that fails there or whose
    output differs from the graph's is rebuilt from the graph, innermost
    first, until they agree or nothing is left to rebuild (verification then
    says where they part). In place; returns path -> why, for the rebuilt."""
    calls = graph.meta.get(CALLS_KEY) or []
    count = Counter(c.path for c in calls)
    candidates = {c.path: c for c in calls if c.path and count[c.path] == 1}
    expected = NodeValues(graph)
    try:
        with torch.no_grad():
            expected.run(*fresh_copy(inputs))
    except Exception:
        return {}
    rebuilt: dict[str, str] = {}
    while candidates:
        modules = dict(model.named_modules())
        watched = {p: c for p, c in candidates.items() if p in modules and RULES.module_rule(modules[p]) is None
                   and not isinstance(modules[p], ReplacedModule)}
        diverging = _diverging(model, modules, watched, expected.values, inputs, tolerance)
        if not diverging:
            break
        for path in diverging:
            call, module = candidates.pop(path), modules[path]
            try:
                new = replace_module(module, module_graph(graph.graph, call, calls, module), REBUILT_WHY)
            except ReplaceError:
                continue
            parent, _, attr = path.rpartition(".")
            model.get_submodule(parent)._modules[attr] = new
            rebuilt[path] = f"{type(module).__name__}.forward: {REBUILT_WHY}"
    return rebuilt


def _diverging(model: nn.Module, modules: dict[str, nn.Module], calls: dict[str, ModuleCall],
               values: dict[str, Any], inputs: tuple, tolerance: float) -> list[str]:
    """The innermost of ``calls``' modules that fail in one run of ``model`` or give another output than the graph."""
    running: list[str] = []
    outputs: dict[str, Any] = {}

    def enter(path: str) -> None:
        running.append(path)

    def leave(path: str, out: Any) -> None:
        running.pop()
        outputs[path] = out

    handles = [h for p in calls for h in (
        modules[p].register_forward_pre_hook(lambda m, a, p=p: enter(p)),
        modules[p].register_forward_hook(lambda m, a, out, p=p: leave(p, out)))]
    try:
        with torch.no_grad():
            model(*fresh_copy(inputs))
    except Exception:
        return running[-1:]  # the innermost watched module that was running when it failed
    finally:
        for handle in handles:
            handle.remove()
    wrong = []
    for path, out in outputs.items():
        want = tree_map(lambda r: values.get(r.name) if isinstance(r, NodeRef) else r, calls[path].output)
        if compare(want, out)[1] > tolerance:
            wrong.append(path)
    return [p for p in wrong if not any(q.startswith(p + ".") for q in wrong)]
