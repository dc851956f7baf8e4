"""Op rules for channel analysis, one module per op kind.

Importing this package registers the built-in rules in :data:`RULES`.
"""

from . import aten, attention, creating, elementwise, factories, layout, normalization, pointwise, reduction  # noqa: F401
from .base import TensorMeta, UnknownOpRule
from .registry import RULES, OpRule, RuleRegistry, register_rule

__all__ = ["RULES", "OpRule", "RuleRegistry", "TensorMeta", "UnknownOpRule", "register_rule"]
