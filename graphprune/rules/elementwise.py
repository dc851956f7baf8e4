"""Element-wise n-ary ops: add, sub, mul, div, maximum, minimum, addcmul.

The ids that meet at an element are unified: a residual add couples the
channels of its operands, an SE gate couples its gate to the gated channels.
The output gets fresh ids unified with each operand, so a mask downstream of
the op follows the coupled channel, not one operand's producer.

Zero bits combine by the op's algebra: a sum is zero only if every addend is
(so union is the lossless way to combine per-layer masks), a product if any
factor is, a quotient if its numerator is (a denominator that may be zero is
pinned). With one tensor operand (``x + 1``, ``x * 0.5``) the op is per-channel
and handled like an activation.
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from .. import ids
from .base import TensorMeta, describe, tensor_args, value
from .layout import depends_on_channel_count
from .pointwise import PointwiseRule
from .registry import register_rule

if TYPE_CHECKING:
    from ..analysis import AnalysisContext
    from ..rewriting import RewriteContext


def original_scalar(arg: Any, rw: RewriteContext) -> Any:
    """``arg``, or its value in the original model where it is a number
    computed from a channel count (``(c // heads) ** -0.5`` of ``b, n, c =
    x.shape``) that the compact model would compute otherwise: arithmetic
    on values keeps the original's constants (the masked model has every
    channel, the dropped ones zero)."""
    if not isinstance(arg, fx.Node) or not isinstance(value(arg), (int, float)) or isinstance(value(arg), bool):
        return arg
    if not depends_on_channel_count(arg, rw.codes) or rw.compact_value(arg) == value(arg):
        return arg
    return value(arg)


class ElementwiseRule:
    name = "elementwise"

    def rewrite(self, node: fx.Node, rw: RewriteContext) -> None:
        if not isinstance(value(node), TensorMeta):
            return  # size arithmetic itself (``heads * (c // heads)``): the rules that read sizes follow it
        node.args = tuple(original_scalar(a, rw) for a in node.args)
        node.kwargs = {k: original_scalar(v, rw) for k, v in node.kwargs.items()}

    def combine(self, zeros: torch.Tensor, operands: list, node: fx.Node, ctx: AnalysisContext) -> torch.Tensor:
        """Where the output is zero when dropped, from the operands' zero bits
        (stacked along dim 0, in argument order): a sum only if every addend is."""
        return zeros.all(0)

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        inputs = tensor_args(node)
        if len(inputs) == 1:
            return PointwiseRule().analyze(node, ctx)
        out = value(node)
        if len(inputs) == 0 or not isinstance(out, TensorMeta):
            return None
        ndim = out.ndim
        operands = []
        for arg in inputs:
            code = ctx.code(arg)
            real = (1,) * (ndim - value(arg).ndim) + tuple(value(arg).shape)
            code = code.reshape((1,) * (ndim - code.ndim) + tuple(code.shape))
            broadcast = {d for d in range(ndim) if real[d] == 1 and out.shape[d] > 1}
            operands.append((arg, code, broadcast))
        varying = {d for _, code, _ in operands for d in ids.varying_dims(code)}
        shape = torch.broadcast_shapes(*(code.shape for _, code, _ in operands))
        raw = ctx.fresh(math.prod(shape)).reshape(shape)
        zeros = []
        for _, code, broadcast in operands:
            if broadcast & varying:
                # One value read by many channels: it cannot follow any of them.
                # Pinned, it is never dropped, so it is not zero when they are.
                ctx.pin_code(code, f"broadcast across channels by {describe(node)} (node {node.name})")
                code = ids.with_zero(code, False)
            else:
                ctx.unify(raw, ids.raw_ids(code))
            zeros.append(ids.zero_bits(code))
        zero = self.combine(torch.stack(torch.broadcast_tensors(*zeros)), operands, node, ctx)
        return ids.encode(raw, zero.expand(shape))


class ProductRule(ElementwiseRule):
    def combine(self, zeros: torch.Tensor, operands: list, node: fx.Node, ctx: AnalysisContext) -> torch.Tensor:
        """Zero where any factor is. A factor that is never zero where the product
        is (an SE gate after its sigmoid) is a gate: where the other factor is
        dropped the product is zero whatever the gate's layer keeps."""
        zero = zeros.any(0)
        for (_, code, _), factor_zero in zip(operands, zeros):  # codes have the output's rank (see analyze)
            gate = zero & ~factor_zero
            if bool(gate.any()):
                ctx.gate(ids.raw_ids(code).expand(zero.shape)[gate])
        return zero


class QuotientRule(ElementwiseRule):
    def combine(self, zeros: torch.Tensor, operands: list, node: fx.Node, ctx: AnalysisContext) -> torch.Tensor:
        denominator = operands[1][1]  # a denominator that may be zero: pinned
        maybe_zero = ids.zero_bits(denominator)
        if bool(maybe_zero.any()):
            ctx.pin(
                ids.raw_ids(denominator)[maybe_zero],
                f"divides by a channel that would be zero, in {describe(node)} (node {node.name})",
            )
        return zeros[0]


class MultiplyAddRule(ElementwiseRule):
    """``addcmul(input, a, b, value=v)`` = input + v * a * b: zero where input
    is and a or b is (timm's global response norm: bias + weight * x)."""

    def combine(self, zeros: torch.Tensor, operands: list, node: fx.Node, ctx: AnalysisContext) -> torch.Tensor:
        if len(operands) != 3:
            return torch.zeros_like(zeros[0])
        return zeros[0] & (zeros[1] | zeros[2])


class PowerRule(ElementwiseRule):
    """``x ** p``: with one tensor, per channel (zero where ``0 ** p`` is, by
    running it); a tensor exponent as well makes it never zero (``0 ** 0 = 1``)."""

    def combine(self, zeros: torch.Tensor, operands: list, node: fx.Node, ctx: AnalysisContext) -> torch.Tensor:
        return torch.zeros_like(zeros[0])


register_rule(
    operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
    "add", "add_", "sub", "sub_", torch.maximum, torch.minimum, "maximum", "minimum",
)(ElementwiseRule)
register_rule(operator.mul, operator.imul, torch.mul, "mul", "mul_")(ProductRule)
register_rule(torch.addcmul, "addcmul")(MultiplyAddRule)
register_rule(operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_")(QuotientRule)
register_rule(operator.pow, torch.pow, "pow")(PowerRule)
