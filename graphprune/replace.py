"""Replacing a module whose forward holds a constant that pruning changes.

Most of a pruned model is the user's own code: its modules are sliced and
their size attributes follow. A module whose *forward code* holds a channel
count (``x.split((self.c, self.c), 1)``, ``chunk(2)`` of halves that keep
different counts, ``view(b, 64, -1)``) cannot be fixed by attributes. Such a
module, and only it, is replaced by a :class:`ReplacedModule`: its forward
rebuilt from the rewritten graph (:func:`module_graph`), with the replaced
module's children, parameters, buffers and every other attribute kept, and
its class name. Its children stay the user's modules: the graph calls them.

A :class:`ReplacedModule` pickles, deep-copies (ultralytics' EMA) and loads
with ``torch.load(weights_only=False)`` like any module.
"""

from __future__ import annotations

import inspect
import operator
import types
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.utils._pytree import tree_leaves

from .tracing import ModuleCall, NodeRef, size_dim

_CLASSES: dict[str, type] = {}


class ReplaceError(Exception):
    """A module's forward cannot be rebuilt on its own from the traced graph."""


def replaced_class(name: str, base: type | None = None) -> type:
    """The ReplacedModule subclass named ``name`` (one per original class name);
    with ``base``, also a subclass of that class (the model's own, replaced)."""
    key = (name, base)
    cls = _CLASSES.get(key)
    if cls is None:
        bases = (ReplacedModule,) if base is None else (ReplacedModule, base)
        cls = type(name, bases, {"__module__": __name__, "__qualname__": f"ReplacedModule.{name}"})
        _CLASSES[key] = cls
    return cls


def _rebuild(class_name: str, state: dict, base: type | None = None) -> ReplacedModule:
    cls = replaced_class(class_name, base)
    module = cls.__new__(cls)
    module.__dict__.update(state)
    module._compile()
    return module


class ReplacedModule(nn.Module):
    """A module of the user's model whose forward was rebuilt by graphprune.

    ``graphprune_reason`` says why; ``graphprune_code`` is the forward's source.
    Created by :func:`replace_module`; the class is named like the module it
    replaces (``type(m).__name__ == "C2f"``) but is not that class, so code
    that special-cases the original class leaves it alone."""

    graphprune_reason: str
    graphprune_code: str

    def _compile(self) -> None:
        code = self._graphprune_graph.python_code(root_module="self")
        namespace = dict(code.globals)
        exec(compile(code.src, f"<graphprune: {type(self).__name__}.forward>", "exec"), namespace)  # noqa: S102
        self.__dict__["forward"] = types.MethodType(namespace["forward"], self)
        self.__dict__["graphprune_code"] = code.src

    def __reduce__(self) -> tuple:
        state = {k: v for k, v in self.__dict__.items() if k not in ("forward", "graphprune_code")}
        bases = [b for b in type(self).__bases__ if b is not ReplacedModule]
        return (_rebuild, (type(self).__name__, state, bases[0] if bases else None))


def replace_module(original: nn.Module, graph: fx.Graph, reason: str, keep_class: bool = False) -> ReplacedModule:
    """``original`` with its forward replaced by ``graph``'s code (graph
    targets are relative to ``original``). ``keep_class``: the result is also
    an instance of ``original``'s class, with all its methods (the model
    itself, replaced: a framework keeps calling its methods); otherwise it is
    not (code that special-cases a block's class leaves the rebuilt one alone)."""
    cls = replaced_class(type(original).__name__, type(original) if keep_class else None)
    module = cls.__new__(cls)
    state = {k: v for k, v in original.__dict__.items() if k != "forward"}
    module.__dict__.update(state)
    module.__dict__.update(getattr(graph, "_graphprune_constants", {}))
    module.__dict__["_graphprune_graph"] = graph
    module.__dict__["graphprune_reason"] = reason
    module._compile()
    return module


# -- the forward of one module call, from the whole model's graph -------------------------------


def _relative(target: str, path: str) -> str:
    if not path:
        return target
    if not target.startswith(path + "."):
        raise ReplaceError(f"it reads {target!r}, which is not one of its own modules or tensors")
    return target[len(path) + 1 :]


class _Builder:
    """Copies the nodes of one module call into a graph of its own, calling
    its direct children (whose forward was traced through) as modules."""

    def __init__(self, graph: fx.Graph, call: ModuleCall, calls: dict[str, ModuleCall], module: nn.Module):
        self.source, self.call, self.calls, self.module = graph, call, calls, module
        self.new = fx.Graph()
        self.env: dict[str, fx.Node] = {}
        self.done_children: set[str] = set()
        self.constants: dict[str, Any] = {}  # top-level tensor constants the forward reads

    def build(self) -> fx.Graph:
        self._placeholders()
        for node in self.source.nodes:
            keys = list(node.meta.get("nn_module_stack", {}))
            if node.op in ("placeholder", "output") or (self.call.path and self.call.key not in keys):
                continue
            child = self._child_key(keys)
            if child is not None and child in self.calls:
                self._child(child)
                continue
            if child is not None and node.op != "call_module" and any(a.op == "get_attr" for a in node.all_input_nodes):
                # an exported graph's child whose call was not recorded: inlining its
                # layers would freeze them (no BatchNorm statistics in training)
                raise ReplaceError(f"its child {child!r} takes or returns several values, so it cannot be called "
                                   "on its own from an exported graph")
            self._copy(node)
        self.new.output(self._value(self.call.output))
        self.new.lint()
        return self.new

    def _child_key(self, keys: list[str]) -> str | None:
        """The key of the direct child of this call that a node with stack ``keys`` belongs to."""
        if not self.call.path:  # the model itself: every node is in its forward
            return keys[0] if keys else None
        i = keys.index(self.call.key)
        return keys[i + 1] if i + 1 < len(keys) else None

    def _value(self, tree: Any) -> Any:
        if isinstance(tree, NodeRef):
            if tree.name not in self.env:
                raise ReplaceError(f"its output {tree.name} is computed outside its forward")
            return self.env[tree.name]
        if isinstance(tree, list):
            return [self._value(v) for v in tree]
        if isinstance(tree, tuple):
            items = [self._value(v) for v in tree]
            return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
        if isinstance(tree, dict):
            return {k: self._value(v) for k, v in tree.items()}
        return tree

    def _bind(self, value: Any, node: fx.Node) -> None:
        """Map the names inside a call's argument (or result) ``value`` to ``node``, indexing into it."""
        if isinstance(value, NodeRef):
            self.env[value.name] = node
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if _has_refs(item):
                    self._bind(item, self.new.call_function(operator.getitem, (node, i)))
        elif isinstance(value, dict):
            for key, item in value.items():
                if _has_refs(item):
                    self._bind(item, self.new.call_function(operator.getitem, (node, key)))

    def _placeholders(self) -> None:
        signature = inspect.signature(self.module.forward)
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()):
            raise ReplaceError("its forward takes *args or **kwargs")
        try:
            bound = signature.bind(*self.call.args, **self.call.kwargs)
        except TypeError as exc:
            raise ReplaceError(f"its recorded call does not fit its forward ({exc})") from None
        for name, parameter in signature.parameters.items():
            if name in bound.arguments:
                placeholder = self.new.placeholder(name)
                self._bind(bound.arguments[name], placeholder)
            else:
                self.new.placeholder(name, default_value=parameter.default)

    def _child(self, key: str) -> None:
        if key in self.done_children:
            return
        self.done_children.add(key)
        call = self.calls[key]
        node = self.new.call_module(_relative(call.path, self.call.path), self._value(call.args),
                                    self._value(call.kwargs))
        self._bind(call.output, node)

    def _attribute(self, target: str) -> str:
        """The name under which the rebuilt forward reads ``target``: its own,
        or, for a tensor constant fx lifted to the traced model's top
        (``_tensor_constant0``: a tensor made in forward), the same name on the
        rebuilt module, which keeps a reference to it."""
        root = self.source.owning_module
        if self.call.path and "." not in target and root is not None and target.startswith("_tensor_constant"):
            self.constants[target] = getattr(root, target)
            return target
        return _relative(target, self.call.path)

    def _size_from_input(self, n: fx.Node) -> None:
        """A symbolic size read outside (an exported graph's batch size), read again from the call's input."""
        sources = {x.name: x for x in self.source.nodes}
        for ref in tree_leaves((self.call.args, self.call.kwargs)):
            if isinstance(ref, NodeRef) and ref.name in self.env and ref.name in sources:
                dim = size_dim(n, sources[ref.name])
                if dim is not None:
                    self.env[n.name] = self.new.call_function(torch.ops.aten.sym_size.int, (self.env[ref.name], dim))
                    return

    def _copy(self, node: fx.Node) -> None:
        def arg(n: fx.Node) -> fx.Node:
            if n.name not in self.env and n.op == "get_attr":  # an exported graph reads parameters at the top
                self.env[n.name] = self.new.get_attr(self._attribute(str(n.target)))
            if n.name not in self.env:
                self._size_from_input(n)
            if n.name not in self.env:
                raise ReplaceError(f"{node.name} uses {n.name}, which is computed outside its forward")
            return self.env[n.name]

        new = self.new.node_copy(node, arg)
        new.meta = {}
        if node.op == "get_attr":
            new.target = self._attribute(str(node.target))
        elif node.op == "call_module":
            new.target = _relative(str(node.target), self.call.path)
        self.env[node.name] = new


def _has_refs(tree: Any) -> bool:
    if isinstance(tree, NodeRef):
        return True
    if isinstance(tree, (list, tuple)):
        return any(_has_refs(v) for v in tree)
    if isinstance(tree, dict):
        return any(_has_refs(v) for v in tree.values())
    return False


def module_graph(graph: fx.Graph, call: ModuleCall, calls: list[ModuleCall], module: nn.Module) -> fx.Graph:
    """The forward of ``module`` (whose call in the traced ``graph`` is
    ``call``) as a graph of its own: the call's nodes, with its traced-through
    children collapsed back into calls of those children. Raises
    :class:`ReplaceError` where the call cannot stand on its own."""
    by_key = {c.key: c for c in calls}
    builder = _Builder(graph, call, by_key, module)
    new = builder.build()
    new._graphprune_constants = builder.constants  # read by replace_module
    return new
