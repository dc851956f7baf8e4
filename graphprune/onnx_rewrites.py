"""Rewrites of an exported ONNX graph into forms ONNX Runtime runs faster.

Each rewrite is one op kind, computes the same function up to float
round-off, and runs on the file before :func:`~graphprune.onnx_export.export_onnx`
checks it on ONNX Runtime against PyTorch, so a rewritten file is checked
like any other. They apply to the dense and the pruned file alike.

- ``Softmax`` over an axis other than the last (YOLOv8's distribution focal
  loss head: 16 bins of each of 8400 anchors along axis 1; a segmentation
  head's class axis) becomes ``ReduceMax``, ``Sub``, ``Exp``, ``ReduceSum``,
  ``Div`` along that axis, which ONNX Runtime's CPU kernels run several times
  faster than its softmax over an inner axis (``benchmarks/onnx_rewrites.py``:
  dense yolov8n at 640, 35.1 -> 30.7 ms on two threads; ``benchmarks/op_profile.py``
  showed the softmax as 17 % of the pruned yolov8n's time before).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

#: op type -> rewrite(model, node, rank of its first input or None) -> replacement nodes, or None to keep it
Rewrite = Callable[[onnx.ModelProto, onnx.NodeProto, "int | None"], "list[onnx.NodeProto] | None"]
REWRITES: dict[str, tuple[str, Rewrite]] = {}


def register_rewrite(op_type: str, what: str) -> Callable[[Rewrite], Rewrite]:
    def wrap(fn: Rewrite) -> Rewrite:
        REWRITES[op_type] = (what, fn)
        return fn

    return wrap


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX domain the model imports (0 if none)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Value name -> rank, where ONNX shape inference knows it."""
    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - no shapes: no rewrite needs them then
        graph = model.graph
    ranks = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks


@register_rewrite("Softmax", "softmax over an inner axis as reductions")
def softmax_over_inner_axis(model: onnx.ModelProto, node: onnx.NodeProto,
                            rank: int | None) -> list[onnx.NodeProto] | None:
    opset = default_opset(model)
    if opset < 13 or rank is None:  # before opset 13 Softmax flattens to 2-D: another function
        return None
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
    axis = axis + rank if axis < 0 else axis
    if axis == rank - 1:
        return None  # the last axis: ONNX Runtime's own kernel is the fast one
    name, x, y = node.name or f"softmax_{id(node)}", node.input[0], node.output[0]
    axes = f"{name}/graphprune_axes"
    model.graph.initializer.append(numpy_helper.from_array(np.array([axis], dtype=np.int64), axes))
    peak = (helper.make_node("ReduceMax", [x, axes], [f"{name}/max"], keepdims=1) if opset >= 18 else
            helper.make_node("ReduceMax", [x], [f"{name}/max"], axes=[axis], keepdims=1))
    return [
        peak,
        helper.make_node("Sub", [x, f"{name}/max"], [f"{name}/shifted"]),
        helper.make_node("Exp", [f"{name}/shifted"], [f"{name}/exp"]),
        helper.make_node("ReduceSum", [f"{name}/exp", axes], [f"{name}/sum"], keepdims=1),
        helper.make_node("Div", [f"{name}/exp", f"{name}/sum"], [y]),
    ]


def rewrite_for_onnxruntime(path: str | Path) -> tuple[str, ...]:
    """Apply every registered rewrite to the file at ``path`` (in place);
    returns what was rewritten, one entry per kind with its count."""
    model = onnx.load(str(path), load_external_data=False)
    if not any(n.op_type in REWRITES for n in model.graph.node):
        return ()
    ranks = _ranks(model)
    nodes, done = [], {}
    for node in model.graph.node:
        kind = REWRITES.get(node.op_type)
        new = kind[1](model, node, ranks.get(node.input[0])) if kind is not None and node.input else None
        if new is None:
            nodes.append(node)
            continue
        nodes.extend(new)
        done[kind[0]] = done.get(kind[0], 0) + 1
    if not done:
        return ()
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return tuple(f"{what} x{count}" for what, count in done.items())
