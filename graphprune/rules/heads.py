"""Whole heads: where a reshape splits channels into attention heads.

With ``PruneConfig.heads == "whole"`` a reshape that splits its input's last
dim (the channels) into ``(..., heads, head_dim)`` (or ``(..., 3, heads,
head_dim)``, q, k and v packed) keeps the heads dim as its channel dim: the
layout rules then make each head one channel, kept or dropped whole, and the
analysis records one id per head for the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from .. import ids
from .base import TensorMeta, value

if TYPE_CHECKING:
    from ..analysis import AnalysisContext


def head_split_dim(node: fx.Node, ctx: AnalysisContext) -> int | None:
    """With whole heads: where ``node`` reshapes its input's channels (varying
    along its last dim only) into several trailing dims, the second to last
    of them (the heads of ``(..., heads, head_dim)``); else None."""
    if not getattr(ctx, "whole_heads", False) or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    code, source, out = ctx.code(node.args[0]), value(node.args[0]), value(node)
    if not (isinstance(code, torch.Tensor) and isinstance(source, TensorMeta) and isinstance(out, TensorMeta)):
        return None
    if code.ndim != source.ndim or ids.varying_dims(code) != [code.ndim - 1]:
        return None
    width, product, first = source.shape[-1], 1, out.ndim
    while first > 0 and product < width:
        first -= 1
        product *= out.shape[first]
    if product != width or out.ndim - first < 2 or tuple(out.shape[:first]) != tuple(source.shape[:-1]):
        return None
    return out.ndim - 2


def record_heads(node: fx.Node, ctx: AnalysisContext, out: Any, dim: int | None) -> None:
    """Note the heads of a reshape into whole heads (one raw id each), under
    the path of the module whose forward made it (else the node's name); once,
    from the eval-mode graph (the training-mode one holds the same heads)."""
    if dim is None or ctx.mode != "eval" or not isinstance(out, torch.Tensor) or ids.varying_dims(out) != [dim]:
        return
    stack = node.meta.get("nn_module_stack") or {}
    where = next(reversed(stack.values()))[0] if stack else node.name
    ctx.heads[where if where not in ctx.heads else node.name] = ids.raw_ids(out).reshape(-1)
