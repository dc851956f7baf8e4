"""Rewrites of an exported ONNX graph into forms ONNX Runtime runs faster.

Each rewrite is one op kind, computes the same function up to float
round-off, and runs on the file before :func:`~graphprune.onnx_export.export_onnx`
checks it on ONNX Runtime against PyTorch, so a rewritten file is checked
like any other. They apply to the dense and the pruned file alike.

- ``Softmax`` over an axis other than the last (YOLOv8's distribution focal
  loss head: 16 bins of each of 8400 anchors along axis 1; a segmentation
  head's class axis) becomes ``ReduceMax``, ``Sub``, ``Exp``, ``ReduceSum``,
  ``Div`` along that axis, which ONNX Runtime's CPU kernels run several times
  faster than its softmax over an inner axis (``benchmarks/op_profile.py``
  showed the softmax as 17 % of the pruned yolov8n's time before).
- A size read from a shape (``Gather(Shape(x), 1)``) that the file fixes
  becomes a constant, and integer arithmetic on constants is done once
  here (a ``chunk(2, 1)`` exported with a dynamic batch computes its slice
  bounds from the input's shape at run time).
- A convolution whose output (after per-channel activations) is only split
  along its channels (YOLO's C2f: ``cv1(x).chunk(2, 1)``) becomes one
  convolution per piece. ONNX Runtime runs convolutions in a blocked layout
  (NCHWc) that ``Split`` and ``Slice`` do not take, so each split cost a
  layout change of the whole tensor out and one per piece back in; the
  pieces' convolutions stay blocked.

``benchmarks/onnx_rewrites.py`` measures what they buy (yolov8n at 640: the
dense file 1.20x, the pruned one 1.34x faster than as exported).

Nodes whose outputs nothing reads any more are removed afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: op type -> rewrite(view, node) -> replacement nodes (``[]`` removes it), or None to keep it;
#: a rewrite that changes something says what with ``view.did(...)``
Rewrite = Callable[["GraphView", onnx.NodeProto], "list[onnx.NodeProto] | None"]
#: the first pass: sizes the file fixes and arithmetic on constants (so the second sees the constants)
FOLDS: dict[str, Rewrite] = {}
#: the second pass: ops in the forms ONNX Runtime runs fast
REWRITES: dict[str, Rewrite] = {}

#: folded constants stay small: sizes and bounds, never weights
FOLD_LIMIT = 64
#: per-channel ops a convolution's output may pass through before it is split (one input, same shape)
PER_CHANNEL = {"Relu", "Sigmoid", "Tanh", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
               "Identity"}


def register_rewrite(*op_types: str, fold: bool = False) -> Callable[[Rewrite], Rewrite]:
    def wrap(fn: Rewrite) -> Rewrite:
        for op_type in op_types:
            (FOLDS if fold else REWRITES)[op_type] = fn
        return fn

    return wrap


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX domain the model imports (0 if none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


@dataclass
class GraphView:
    """What rewrites read about the graph: shapes (ONNX shape inference: an
    int per fixed dim, None otherwise), constants (initializers, ``Constant``
    nodes and what rewrites folded), who reads each value; and the
    initializers rewrites add."""

    model: onnx.ModelProto
    shapes: dict[str, list[int | None]] = field(default_factory=dict)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    readers: dict[str, list[onnx.NodeProto]] = field(default_factory=dict)
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    #: values a rewrite already produced elsewhere: their own nodes are dropped
    done: set[str] = field(default_factory=set)
    #: what the rewrites did: kind -> count
    counts: dict[str, int] = field(default_factory=dict)

    def did(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    @classmethod
    def of(cls, model: onnx.ModelProto) -> GraphView:
        view = cls(model)
        try:
            graph = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # noqa: BLE001 - no shapes: the rewrites that need them do nothing
            graph = model.graph
        for value in (*graph.input, *graph.value_info, *graph.output):
            if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
                view.shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                           for d in value.type.tensor_type.shape.dim]
        view.constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        view.index()
        return view

    def index(self) -> None:
        """Readers, producers and constant nodes of the graph's nodes as they are now."""
        self.readers, self.producers = {}, {}
        for node in self.model.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
            for name in node.output:
                self.producers[name] = node
            if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
                self.constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            elif node.op_type == "Identity" and node.input[0] in self.constants:  # a shared constant
                self.constants[node.output[0]] = self.constants[node.input[0]]

    @property
    def opset(self) -> int:
        return default_opset(self.model)

    def constant(self, name: str) -> np.ndarray | None:
        return self.constants.get(name) if name else None

    def add_constant(self, value: np.ndarray, name: str) -> str:
        self.model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        self.constants[name] = np.asarray(value)
        return name

    def only_reader(self, name: str) -> onnx.NodeProto | None:
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 and not self.is_output(name) else None

    def is_output(self, name: str) -> bool:
        return any(o.name == name for o in self.model.graph.output)


def _attr(node: onnx.NodeProto, name: str, default=None):
    found = next((a for a in node.attribute if a.name == name), None)
    return helper.get_attribute_value(found) if found is not None else default


@register_rewrite("Softmax")
def softmax_over_inner_axis(view: GraphView, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    opset, shape = view.opset, view.shapes.get(node.input[0])
    if opset < 13 or shape is None:  # before opset 13 Softmax flattens to 2-D: another function
        return None
    rank = len(shape)
    axis = _attr(node, "axis", -1)
    axis = axis + rank if axis < 0 else axis
    if axis == rank - 1:
        return None  # the last axis: ONNX Runtime's own kernel is the fast one
    name, x, y = node.name or f"softmax_{id(node)}", node.input[0], node.output[0]
    axes = view.add_constant(np.array([axis], dtype=np.int64), f"{name}/graphprune_axes")
    view.did("softmax over an inner axis as reductions")
    peak = (helper.make_node("ReduceMax", [x, axes], [f"{name}/max"], keepdims=1) if opset >= 18 else
            helper.make_node("ReduceMax", [x], [f"{name}/max"], axes=[axis], keepdims=1))
    return [
        peak,
        helper.make_node("Sub", [x, f"{name}/max"], [f"{name}/shifted"]),
        helper.make_node("Exp", [f"{name}/shifted"], [f"{name}/exp"]),
        helper.make_node("ReduceSum", [f"{name}/exp", axes], [f"{name}/sum"], keepdims=1),
        helper.make_node("Div", [f"{name}/exp", f"{name}/sum"], [y]),
    ]


# -- sizes read from shapes, and arithmetic on constants --------------------------


SIZES = "sizes the file fixes as constants"


@register_rewrite("Shape", fold=True)
def fixed_shape(view: GraphView, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """``Shape(x)`` where the file fixes every dim it returns: a constant."""
    shape = view.shapes.get(node.input[0])
    if shape is None or view.is_output(node.output[0]):
        return None
    start, end = _attr(node, "start", 0), _attr(node, "end", len(shape))
    dims = shape[slice(start, end)]
    if any(d is None for d in dims):
        return None
    view.add_constant(np.array(dims, dtype=np.int64), node.output[0])
    view.did(SIZES)
    return []


@register_rewrite("Gather", fold=True)
def fixed_size(view: GraphView, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """``Gather(Shape(x), k)`` where the file fixes dim k of x: a constant
    (the batch stays read from x; the other sizes no longer need it)."""
    source, index = view.producers.get(node.input[0]), view.constant(node.input[1])
    if index is not None and view.constant(node.input[0]) is not None:
        return fold(view, node)
    if source is None or source.op_type != "Shape" or index is None or _attr(node, "axis", 0) != 0:
        return None
    if view.is_output(node.output[0]):
        return None
    shape = view.shapes.get(source.input[0])
    if shape is None:
        return None
    dims = shape[slice(_attr(source, "start", 0), _attr(source, "end", len(shape)))]
    picked = np.take(np.array([-1 if d is None else d for d in dims], dtype=np.int64), index)
    if bool(np.any(picked < 0)):
        return None
    view.add_constant(picked, node.output[0])
    view.did(SIZES)
    return []


@register_rewrite("Add", "Sub", "Mul", "Div", "Unsqueeze", "Squeeze", "Concat", "Cast", "Reshape", "Slice", fold=True)
def fold(view: GraphView, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """A small integer op on constants, computed now (not counted: it follows a size made constant)."""
    inputs = [view.constant(name) for name in node.input]
    if not node.input or any(v is None for v in inputs) or any(v.size > FOLD_LIMIT for v in inputs):
        return None
    if len(node.output) != 1 or view.is_output(node.output[0]) or any(v.dtype.kind not in "iu" for v in inputs):
        return None
    from onnx.reference import ReferenceEvaluator

    try:
        (out,) = ReferenceEvaluator(node).run(None, dict(zip(node.input, inputs)))
    except Exception:  # noqa: BLE001 - not computable here: ONNX Runtime computes it
        return None
    view.add_constant(np.asarray(out), node.output[0])
    return []



# -- a convolution split along its channels becomes one per piece -----------------


def _activations(view: GraphView, value: str) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """The Conv whose output ``value`` is after per-channel ops that only the
    next one reads, and those ops, first to last (SiLU's ``Mul(c, Sigmoid(c))``
    as its two nodes)."""
    chain: list[onnx.NodeProto] = []
    while True:
        node = view.producers.get(value)
        if node is None:
            return None
        if node.op_type == "Conv":
            return node, chain[::-1]
        if node.op_type == "Mul" and len(node.input) == 2:  # SiLU: Mul(c, Sigmoid(c))
            c, s = node.input
            gate = view.producers.get(s)
            if gate is None or gate.op_type != "Sigmoid" or gate.input[0] != c or view.only_reader(s) is None:
                return None
            if view.is_output(c) or sorted(map(id, view.readers.get(c, []))) != sorted((id(node), id(gate))):
                return None
            chain += [node, gate]
            value = c
            continue
        if node.op_type not in PER_CHANNEL or len(node.input) != 1 or view.only_reader(node.input[0]) is None:
            return None
        chain.append(node)
        value = node.input[0]


def _pieces(view: GraphView, value: str, channels: int, rank: int) -> list[tuple[str, int, int]] | None:
    """Every reader of ``value`` (of rank ``rank``) cuts channels [a, b) out of it (Split along
    axis 1, or Slice along axis 1 with step 1): (output, a, b) for each piece."""
    pieces = []
    for reader in view.readers.get(value, []):
        if reader.op_type == "Split" and _attr(reader, "axis", 0) % rank == 1:
            sizes = view.constant(reader.input[1]) if len(reader.input) > 1 else _attr(reader, "split")
            if sizes is None:
                count = _attr(reader, "num_outputs", len(reader.output))
                if channels % count:
                    return None
                sizes = [channels // count] * count
            starts = np.cumsum([0, *list(sizes)])
            pieces += [(out, int(a), int(b)) for out, a, b in zip(reader.output, starts[:-1], starts[1:]) if out]
        elif reader.op_type == "Slice" and len(reader.input) >= 4:
            starts, ends, axes = (view.constant(n) for n in reader.input[1:4])
            steps = view.constant(reader.input[4]) if len(reader.input) > 4 and reader.input[4] else np.ones(1)
            if any(v is None or v.size != 1 for v in (starts, ends, axes, steps)) or int(steps[0]) != 1:
                return None
            if int(axes[0]) % rank != 1:
                return None
            a, b = (int(v[0]) + channels if int(v[0]) < 0 else int(v[0]) for v in (starts, ends))
            pieces.append((reader.output[0], max(0, min(a, channels)), max(0, min(b, channels))))
        else:
            return None
    return pieces if pieces and all(b > a for _, a, b in pieces) else None


def _piece_nodes(view: GraphView, conv: onnx.NodeProto, chain: list[onnx.NodeProto], out: str,
                 a: int, b: int) -> list[onnx.NodeProto]:
    """The convolution of channels [a, b) and its activations, writing ``out``."""
    tag = f"{conv.name or conv.output[0]}/graphprune_{a}_{b}"
    weight = view.add_constant(view.constant(conv.input[1])[a:b], f"{tag}/w")
    inputs = [conv.input[0], weight]
    if len(conv.input) > 2 and conv.input[2]:
        inputs.append(view.add_constant(view.constant(conv.input[2])[a:b], f"{tag}/b"))
    renamed = {conv.output[0]: f"{tag}/conv"}
    nodes = [helper.make_node("Conv", inputs, [renamed[conv.output[0]]], name=f"{tag}/Conv")]
    nodes[0].attribute.extend(conv.attribute)
    for op in chain:
        new = onnx.NodeProto()
        new.CopyFrom(op)
        new.name = f"{tag}/{op.name or op.op_type}"
        for i, name in enumerate(new.input):
            new.input[i] = renamed.get(name, name)
        renamed[op.output[0]] = f"{tag}/{op.output[0]}"
        new.output[0] = renamed[op.output[0]]
        nodes.append(new)
    last = nodes[-1]
    last.output[0] = out
    return nodes


def split_convolution(view: GraphView, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    value = node.input[0]
    if node.output[0] in view.done:
        return []  # another piece's reader made this one
    if view.is_output(value):
        return None
    found = _activations(view, value)
    if found is None:
        return None
    conv, chain = found
    weight = view.constant(conv.input[1]) if len(conv.input) > 1 else None
    if weight is None or _attr(conv, "group", 1) != 1 or (len(conv.input) > 2 and conv.input[2]
                                                            and view.constant(conv.input[2]) is None):
        return None
    pieces = _pieces(view, value, weight.shape[0], weight.ndim)  # a conv's output has its weight's rank
    if pieces is None:
        return None
    nodes = [n for out, a, b in pieces for n in _piece_nodes(view, conv, chain, out, a, b)]
    view.done.update(out for out, _, _ in pieces)
    view.did("convolutions split along their channels as one per piece")
    return nodes


register_rewrite("Split", "Slice")(split_convolution)


# -- the pass -----------------------------------------------------------------------


def _without_unread(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """``nodes`` less those whose outputs nothing reads (last first), and the initializers left unread.
    A graph with subgraphs (If, Loop: they read values by name from inside) keeps every node."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute):
        return nodes
    wanted = {o.name for o in model.graph.output}
    kept = []
    for node in reversed(nodes):
        if any(o in wanted for o in node.output if o):
            kept.append(node)
            wanted.update(node.input)
    kept.reverse()
    wanted.update(i.name for i in model.graph.input)  # an initializer listed as an input stays
    unread = [t for t in model.graph.initializer if t.name not in wanted]
    for t in unread:
        model.graph.initializer.remove(t)
    return kept


def rewrite_for_onnxruntime(path: str | Path) -> tuple[str, ...]:
    """Apply every registered rewrite to the file at ``path`` (in place);
    returns what was rewritten, one entry per kind with its count."""
    model = onnx.load(str(path), load_external_data=False)
    if not any(n.op_type in REWRITES for n in model.graph.node):
        return ()
    view = GraphView.of(model)
    for table in (FOLDS, REWRITES):
        nodes = []
        for node in model.graph.node:
            rewrite = table.get(node.op_type)
            new = rewrite(view, node) if rewrite is not None and node.input else None
            nodes.extend([node] if new is None else new)
        nodes = _without_unread(model, nodes)  # a shape read whose sizes became constants, say
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        view.index()
    if not view.counts:
        return ()
    onnx.save(model, str(path))
    return tuple(f"{what} x{count}" for what, count in view.counts.items())
