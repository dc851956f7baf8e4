"""The op-rule registry: one rule per op kind, looked up per fx node.

A rule is an object with

- ``name``: a short label for reports;
- ``analyze(node, ctx) -> code``: propagate channel-identity codes (see
  ``graphprune/ids.py``) from the node's inputs to its output, reporting
  slots, unions and pins to the :class:`~graphprune.analysis.AnalysisContext`;
- optionally ``rewrite(node, compact)``: fix what the node encodes about
  channel counts (module attributes, split sizes, view shapes) once the
  compact model's parameters have been sliced;
- optionally, for a module rule, ``whole = True``: the tracer keeps the
  module as one call instead of tracing its forward (a library's block);
- optionally, for a module rule, ``fix_module(module)``: set the module's
  size attributes (``in_channels``, ``num_features``, ...) from its sliced
  tensors; this keeps a pruned copy of the user's own model consistent.

Rules are registered for torch.nn module classes (``call_module``), Python
callables (``call_function``) and method names (``call_method``); a dotted
name (``"timm.layers.std_conv.StdConv2d"``) registers a module class of a
library graphprune does not import, matched by its module and qualified name. Adding
support for an op is registering one rule; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import torch.fx as fx
import torch.nn as nn

if TYPE_CHECKING:
    from ..analysis import AnalysisContext


class OpRule(Protocol):
    name: str

    def analyze(self, node: fx.Node, ctx: AnalysisContext) -> Any: ...


class RuleRegistry:
    def __init__(self) -> None:
        self._modules: dict[type, OpRule] = {}
        self._functions: dict[Callable, OpRule] = {}
        self._methods: dict[str, OpRule] = {}
        self._class_names: dict[str, OpRule] = {}

    def register(self, rule: OpRule, *targets: Any) -> OpRule:
        for target in targets:
            if isinstance(target, str) and "." in target:
                self._class_names[target] = rule
            elif isinstance(target, str):
                self._methods[target] = rule
            elif isinstance(target, type) and issubclass(target, nn.Module):
                self._modules[target] = rule
            elif callable(target):
                self._functions[target] = rule
            else:
                raise TypeError(f"cannot register a rule for {target!r}")
        return rule

    def lookup(self, node: fx.Node, gm: fx.GraphModule, modules: dict | None = None) -> OpRule | None:
        """The rule for ``node``; ``modules`` (name -> module of ``gm``), when
        given, saves walking the module path."""
        if node.op == "call_module":
            module = modules.get(node.target) if modules is not None else None
            if module is None:
                try:
                    module = gm.get_submodule(node.target)
                except AttributeError:  # not a module (an exported graph's guard function)
                    return None
            for cls in type(module).__mro__:
                rule = self._class_rule(cls)
                if rule is not None:
                    # A subclass that overrides forward computes something else.
                    if type(module).forward is not cls.forward:
                        return None
                    return rule
            return None
        if node.op == "call_function":
            try:
                return self._functions.get(node.target)
            except TypeError:  # unhashable callable
                return None
        if node.op == "call_method":
            return self._methods.get(node.target)
        return None

    def traced_whole(self, module: nn.Module) -> bool:
        """Whether the tracer keeps ``module`` as one call: its rule (for its
        own class, forward not overridden) says ``whole = True`` (a block of a
        library whose forward the rule understands as one op)."""
        rule = self._class_rule(type(module))
        return rule is not None and getattr(rule, "whole", False)

    def module_rule(self, module: nn.Module) -> OpRule | None:
        """The rule registered for ``module``'s class or its nearest base class,
        whatever its forward (its size attributes are the base class's)."""
        for cls in type(module).__mro__:
            rule = self._class_rule(cls)
            if rule is not None:
                return rule
        return None

    def _class_rule(self, cls: type) -> OpRule | None:
        rule = self._modules.get(cls)
        if rule is None and self._class_names:
            rule = self._class_names.get(f"{cls.__module__}.{cls.__qualname__}")
        return rule


RULES = RuleRegistry()


def register_rule(*targets: Any) -> Callable[[OpRule], OpRule]:
    """Register ``rule`` for modules, functions or method names.

    Example::

        @register_rule(MyActivation)
        class MyActivationRule(PointwiseRule): ...
    """

    def wrap(rule: Any) -> Any:
        instance = rule() if isinstance(rule, type) else rule
        RULES.register(instance, *targets)
        return rule

    return wrap
