"""Op rules for channel analysis, one module per op kind.

Importing this package registers the built-in rules in :data:`RULES`.
"""

from . import (  # noqa: F401
    aten,
    attention,
    contraction,
    creating,
    elementwise,
    factories,
    joining,
    layout,
    normalization,
    pointwise,
    reduction,
)
from .base import TensorMeta, UnknownOpRule
from .registry import RULES, OpRule, RuleRegistry, register_rule

__all__ = ["RULES", "OpRule", "RuleRegistry", "TensorMeta", "UnknownOpRule", "register_rule"]
