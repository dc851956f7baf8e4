"""Helpers shared by op rules: reading recorded values, running a node's op on
stand-in tensors, and the fallback for ops without a rule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx
from torch.fx.node import map_aggregate

from .. import ids

if TYPE_CHECKING:
    from ..analysis import AnalysisContext

VALUE_KEY = "graphprune.value"


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of a tensor the shape pass saw at a node."""

    shape: torch.Size
    dtype: torch.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)


def value(arg: Any) -> Any:
    """What the shape pass recorded for ``arg``: a TensorMeta, a nested structure
    of them, or a concrete Python value (ints of ``x.size()``, ...)."""
    if isinstance(arg, fx.Node):
        return arg.meta.get(VALUE_KEY)
    return arg


def argument(node: fx.Node, position: int, name: str, default: Any = None) -> Any:
    """An argument of a call node, given by position or by keyword."""
    if len(node.args) > position:
        return node.args[position]
    return node.kwargs.get(name, default)


def has_tensor(v: Any) -> bool:
    found = False

    def visit(x: Any) -> Any:
        nonlocal found
        found = found or isinstance(x, TensorMeta)
        return x

    map_aggregate(v, visit)
    return found


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """The node's inputs (args and kwargs, nested) that are tensors."""
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) if isinstance(value(n), TensorMeta) else None)
    return out


def substitute(node: fx.Node, tensor: Callable[[fx.Node], Any]) -> tuple[tuple, dict]:
    """The node's args with tensor inputs replaced by ``tensor(input)`` and
    other node inputs by their recorded concrete values."""

    def sub(n: fx.Node) -> Any:
        v = value(n)
        if isinstance(v, TensorMeta):
            return tensor(n)
        return map_aggregate(v, lambda x: x)

    args = fx.node.map_arg(node.args, sub)
    kwargs = fx.node.map_arg(node.kwargs, sub)
    return tuple(args), dict(kwargs)


def call(node: fx.Node, gm: fx.GraphModule, args: tuple, kwargs: dict, modules: dict | None = None) -> Any:
    """Run the node's op on the given arguments (``modules``: name -> module
    of ``gm``, to skip walking the module path)."""
    if node.op == "call_module":
        module = modules.get(node.target) if modules is not None else None
        return (module if module is not None else gm.get_submodule(node.target))(*args, **kwargs)
    if node.op == "call_method":
        self_arg, *rest = args
        return getattr(self_arg, node.target)(*rest, **kwargs)
    return node.target(*args, **kwargs)


def describe(node: fx.Node) -> str:
    if node.op == "call_module":
        return f"module {node.target!r}"
    if node.op == "call_method":
        return f"method .{node.target}()"
    target = getattr(node.target, "__name__", str(node.target))
    return f"function {target}()"


def opaque(node: fx.Node, ctx: AnalysisContext, reason: str) -> Any:
    """Codes for an output whose channels nothing can be said about: one fresh
    pinned id per tensor."""

    def make(v: Any) -> Any:
        if isinstance(v, TensorMeta):
            raw = ctx.fresh(1)
            ctx.pin(raw, reason)
            return ids.encode(raw.reshape((1,) * v.ndim), False)
        return None

    return map_aggregate(value(node), make)


class UnknownOpRule:
    """Ops without a rule: pin every channel they read, and their output."""

    name = "unknown"

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        reason = f"read by {describe(node)} (node {node.name}), which has no channel rule"
        for arg in tensor_args(node):
            code = ctx.code(arg)
            if code is not None:
                ctx.pin_code(code, reason)
        return opaque(node, ctx, f"produced by {describe(node)} (node {node.name}), which has no channel rule")


def channel_line(ctx: AnalysisContext, node: fx.Node, code: torch.Tensor, dim: int, size: int) -> torch.Tensor | None:
    """The code of each of the ``size`` channels along ``dim`` of an input that
    ``node`` treats channel by channel.

    Returns None, pinning the input, when the ids also vary along another dim:
    a per-channel parameter cannot follow that.
    """
    dim = dim % code.ndim
    if any(d != dim for d in ids.varying_dims(code)):
        ctx.pin_code(code, f"read by {describe(node)} (node {node.name}) with channels that vary across positions")
        return None
    return code.reshape(-1).expand(size) if code.shape[dim] == 1 else code.reshape(-1)


def size_read(node: fx.Node) -> tuple[fx.Node, int | None] | None:
    """(tensor, dim) when ``node`` reads a tensor's size: ``x.size(d)``,
    ``x.size()`` / ``x.shape`` (dim None: every dim), ATen ``sym_size``."""
    if node.op == "call_method" and node.target in ("size", "numel") and node.args:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        return node.args[0], dim if node.target == "size" else None
    if node.op == "call_function" and node.target is getattr and node.args[1:] == ("shape",):
        return node.args[0], None
    if node.op == "call_function" and node.target in (torch.numel,):
        return node.args[0], None
    if node.op == "call_function" and "sym_size" in str(node.target) and len(node.args) > 1:
        return node.args[0], node.args[1]
    return None


def module_path(node: fx.Node) -> str:
    return str(node.target)


def qualified(module: str, attr: str) -> str:
    return f"{module}.{attr}" if module else attr
