"""The torch.fx tracer of the fx frontend, and what it records about module calls.

:func:`trace` is ``torch.fx.symbolic_trace`` with three differences:

- ``forward(self, x, *args, **kwargs)`` traces: the extra positional and
  keyword arguments are empty while tracing (ultralytics' models are written
  so), instead of proxies that fail when unpacked;
- ``list(x.chunk(2, 1))`` and ``a, *rest = x.split([4, 4, 8])`` trace: a
  chunk or split with a literal count of pieces can be iterated (ultralytics'
  C2f and its relatives);
- every call of a module whose forward is traced through (not a leaf) is
  recorded as a :class:`ModuleCall`: which nodes it took and which it
  returned. The structure-preserving rewrite needs these boundaries to
  rebuild one module's forward on its own;
- whether the traced code read any module's ``training`` flag is recorded
  (``gm.meta[READS_TRAINING_KEY]``): where none did, the model traced in
  training mode runs the same code and gives the same graph.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .copying import LazyGraphModule
from .rules.registry import RULES

#: gm.meta key: the list of :class:`ModuleCall` of a traced graph
CALLS_KEY = "graphprune.calls"

#: gm.meta key: whether the traced code read a module's ``training`` flag (None: not known)
READS_TRAINING_KEY = "graphprune.reads_training"

SPLITTING = {"chunk": 1, "split": 1, "tensor_split": 1}


@dataclass(frozen=True)
class NodeRef:
    """A node of the traced graph, by name, inside a recorded call's arguments or result."""

    name: str


@dataclass(frozen=True)
class ModuleCall:
    """One call of a traced-through module: ``path`` its qualified name,
    ``key`` its key in the nodes' ``nn_module_stack`` (``"path@1"`` for the
    second call of the same module), ``args``/``kwargs``/``output`` the call's
    inputs and result with every node replaced by a :class:`NodeRef`."""

    path: str
    key: str
    args: tuple
    kwargs: dict
    output: Any


def _names(tree: Any) -> Any:
    """``tree`` with proxies and nodes replaced by :class:`NodeRef`."""
    def name(value: Any) -> Any:
        if isinstance(value, fx.Proxy):
            return NodeRef(value.node.name)
        if isinstance(value, fx.Node):
            return NodeRef(value.name)
        return value

    if isinstance(tree, list):  # fx's immutable_list too
        return [_names(v) for v in tree]
    if isinstance(tree, tuple):
        items = [_names(v) for v in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    if isinstance(tree, dict):
        return {k: _names(v) for k, v in tree.items()}
    return name(tree)


class _NoArgs(fx.Proxy):
    """A ``*args`` placeholder while tracing: nothing to unpack."""

    def __len__(self) -> int:
        return 0

    def __iter__(self):
        return iter(())


class _Pieces(fx.Proxy):
    """The result of a chunk or split whose number of pieces is a literal."""

    def __init__(self, node: fx.Node, tracer: fx.Tracer, count: int):
        super().__init__(node, tracer)
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __iter__(self):
        return iter([self[i] for i in range(self._count)])


def piece_count(node: fx.Node) -> int | None:
    """How many pieces a chunk or split node yields, where its arguments say."""
    if node.op not in ("call_method", "call_function"):
        return None
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    name = name.split(".")[0]
    if name not in SPLITTING:
        return None
    position = SPLITTING[name]
    arg = node.args[position] if len(node.args) > position else next(iter(node.kwargs.values()), None)
    if name == "chunk" and isinstance(arg, int):
        return arg
    if isinstance(arg, (list, tuple)) and all(isinstance(a, int) for a in arg):
        return len(arg) + (1 if name == "tensor_split" else 0)
    return None


class GraphpruneTracer(fx.Tracer):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[ModuleCall] = []

    def proxy(self, node: fx.Node) -> fx.Proxy:
        if node.op == "placeholder" and str(node.target).startswith("*") and not str(node.target).startswith("**"):
            return _NoArgs(node, self)
        count = piece_count(node)
        if count is not None:
            return _Pieces(node, self, count)
        return super().proxy(node)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return super().is_leaf_module(m, module_qualified_name) or RULES.traced_whole(m)

    def keys(self, obj: fx.Proxy) -> Any:
        if obj.node.op == "placeholder" and str(obj.node.target).startswith("**"):
            return []
        return super().keys(obj)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        path = self.path_of_module(m)
        calls = self.num_calls.get(path, 0)
        key = f"{path}@{calls}" if calls else path
        out = super().call_module(m, forward, args, kwargs)
        if not self.is_leaf_module(m, path):
            self.calls.append(ModuleCall(path, key, _names(args), _names(kwargs), _names(out)))
        return out


def trace(model: nn.Module, unless_same_as: fx.Graph | None = None) -> fx.GraphModule | None:
    """``model`` as an fx.GraphModule (see the module docstring). The model's
    own call is recorded too, as the :class:`ModuleCall` of path ``""``.
    With ``unless_same_as``: None where the traced graph is that one node for
    node (building the GraphModule, its code generated and compiled, is a
    third of tracing)."""
    tracer = GraphpruneTracer()
    with training_reads() as reads:
        graph = tracer.trace(model)
    for node in list(graph.nodes):
        if node.op == "placeholder" and str(node.target).startswith("*") and not node.users:
            graph.erase_node(node)
    if unless_same_as is not None and same_graph(graph, unless_same_as):
        return None
    gm = LazyGraphModule(tracer.root, graph, type(model).__name__)
    inputs = tuple(NodeRef(n.name) for n in graph.nodes if n.op == "placeholder")
    output = next(n for n in graph.nodes if n.op == "output")
    gm.meta[CALLS_KEY] = [*tracer.calls, ModuleCall("", "", inputs, {}, _names(output.args[0]))]
    gm.meta[READS_TRAINING_KEY] = None if reads is None else bool(reads)
    return gm


@contextlib.contextmanager
def training_reads() -> Iterator[list[type] | None]:
    """The classes of the modules whose ``training`` flag was read inside the
    block (None where that cannot be watched). While it runs, ``training``
    is a property of ``nn.Module`` that reads and writes each module's own
    flag as before and notes each read; afterwards it is a plain attribute
    again. Code that reads the flag around attribute access (``vars(m)``)
    is not seen, and neither is state a class's own ``train()`` sets: see
    :func:`changes_in_training`."""
    if "training" in nn.Module.__dict__:  # watched already (another trace), or defined: not ours to replace
        yield None
        return
    reads: list[type] = []

    def read(module: nn.Module) -> bool:
        reads.append(type(module))
        try:
            return module.__dict__["training"]
        except KeyError:
            raise AttributeError(f"'{type(module).__name__}' object has no attribute 'training'") from None

    def write(module: nn.Module, value: bool) -> None:
        module.__dict__["training"] = value

    nn.Module.training = property(read, write)
    try:
        yield reads
    finally:
        del nn.Module.training


def changes_in_training(model: nn.Module, gm: fx.GraphModule) -> bool:
    """Whether ``model`` traced in training mode might give another graph than
    ``gm``, its eval-mode trace: its traced code read a ``training`` flag,
    or one of its classes has a ``train()`` of its own (which may set
    anything), or it is not known."""
    if gm.meta.get(READS_TRAINING_KEY) is not False:
        return True
    return any(type(m).train is not nn.Module.train for m in model.modules())


def same_graph(a: fx.Graph, b: fx.Graph) -> bool:
    """Whether two graphs are the same program: node for node the same op,
    name, target and arguments (nodes compared by name, constants by value)."""
    def row(n: fx.Node) -> tuple:
        def name(arg: fx.Node) -> str:
            return arg.name
        return n.op, n.name, n.target, fx.node.map_arg(n.args, name), fx.node.map_arg(n.kwargs, name)

    if len(a.nodes) != len(b.nodes):
        return False
    try:
        return all(row(x) == row(y) for x, y in zip(a.nodes, b.nodes))
    except Exception:  # a constant that cannot be compared (a tensor): not provably the same
        return False


def size_dim(node: fx.Node, tensor: fx.Node) -> int | None:
    """Where ``node`` is a symbolic size (torch.export's dynamic batch) that
    ``tensor`` has too, the dim of ``tensor`` that has it."""
    size, value = node.meta.get("val"), tensor.meta.get("val")
    if not isinstance(size, torch.SymInt) or not hasattr(value, "shape"):
        return None
    return next((d for d, s in enumerate(value.shape) if isinstance(s, torch.SymInt) and s.node.expr == size.node.expr),
                None)


def calls_from_stacks(graph: fx.Graph) -> list[ModuleCall]:
    """Module calls of a graph that records no calls (torch.export's), read
    from the nodes' ``nn_module_stack``: a call's inputs are the values its
    nodes read from outside (parameters aside, and a symbolic size its one
    input has too: torch.export reads the batch size once, outside), its
    output the one value used outside. Only calls that take one value and
    give one are recorded (with several, which input is which cannot be
    told); the model's own forward is not (an exported graph's inputs and
    outputs are flattened)."""
    members: dict[str, list[fx.Node]] = {}
    paths: dict[str, str] = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        for key, entry in (node.meta.get("nn_module_stack") or {}).items():
            members.setdefault(key, []).append(node)
            paths[key] = entry[0]
    calls = []
    for key, nodes in members.items():
        inside = set(nodes)
        inputs = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes
                                    if a not in inside and a.op != "get_attr"))
        tensors = [a for a in inputs if not isinstance(a.meta.get("val"), torch.SymInt)]
        if len(tensors) == 1 and all(size_dim(a, tensors[0]) is not None for a in inputs if a is not tensors[0]):
            inputs = tensors
        outputs = [n for n in nodes if any(u not in inside for u in n.users)]
        if paths[key] and len(inputs) == 1 and len(outputs) == 1:
            calls.append(ModuleCall(paths[key], key, (NodeRef(inputs[0].name),), {}, NodeRef(outputs[0].name)))
    return calls


def module_stack(node: fx.Node) -> list[str]:
    """The keys of the modules whose forward ``node`` was traced in, outermost first."""
    return list(node.meta.get("nn_module_stack", {}))


def stack_paths(node: fx.Node) -> dict[str, str]:
    """nn_module_stack key -> qualified module name, for ``node``."""
    return {key: entry[0] for key, entry in node.meta.get("nn_module_stack", {}).items()}


__all__ = ["CALLS_KEY", "GraphpruneTracer", "ModuleCall", "NodeRef", "READS_TRAINING_KEY", "calls_from_stacks", "changes_in_training", "module_stack", "piece_count", "same_graph", "size_dim", "stack_paths", "trace", "training_reads"]
