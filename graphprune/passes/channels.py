"""Channel analysis pass: coupled channels by propagating channel identities.

Walks the graph once in topological order. Each node's op rule (see
``graphprune/rules``) maps the id codes of its inputs to its output; graph
inputs, outputs, ignored modules and ops without a rule pin what they touch.
The result, ``state.channels``, is a :class:`~graphprune.analysis.ChannelGraph`.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import operator
import os
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .. import ids
from ..analysis import AnalysisContext
from ..contract import Contract, defaults, describe, leaves, resolve
from ..errors import ConfigError
from ..pipeline import CompileState
from ..rules import RULES, TensorMeta, UnknownOpRule
from ..rules.base import has_tensor, opaque, tensor_args, value
from ..tensors import owner_of, split_target

UNKNOWN = UnknownOpRule()


def resolve_ignore(gm: fx.GraphModule, patterns: tuple[str, ...], model: nn.Module | None = None) -> set[str]:
    """Module names matched by ``patterns`` (exact names or glob patterns).

    Names are looked up in the traced graph and in the user's ``model``: the
    graph holds only the modules forward calls, so a container whose
    parameters are read directly (an ``nn.ParameterDict``) is only in the model."""
    names = [n for n, _ in gm.named_modules() if n]
    if model is not None:
        known = set(names)
        names += [n for n, _ in model.named_modules() if n and n not in known]
    matched: set[str] = set()
    for pattern in patterns:
        hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"ignore names {pattern!r}, but the model has no such module{hint}")
        matched.update(hits)
    return matched


INPLACE_FUNCTIONS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def mutates_first_arg(node: fx.Node, gm: fx.GraphModule, modules: dict | None = None) -> bool:
    """Whether the op writes its result into its first input (``x += y``,
    ``x.relu_()``, ``F.relu(x, inplace=True)``, ``nn.ReLU(inplace=True)``)."""
    if node.kwargs.get("inplace"):
        return True
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_function":
        schema = getattr(node.target, "_schema", None)  # ATen overloads say so in their schema
        if schema is not None and schema.arguments:
            alias = schema.arguments[0].alias_info
            return bool(alias is not None and alias.is_write)
        return node.target in INPLACE_FUNCTIONS
    if node.op == "call_module":
        module = modules.get(node.target) if modules is not None else None
        return bool(getattr(module if module is not None else gm.get_submodule(node.target), "inplace", False))
    return False


def tie_shared_tensors(ctx: AnalysisContext, graphs: list[fx.GraphModule]) -> None:
    """One tensor under several names (tied weights: ``b.weight = a.weight``)
    is one set of values: index i along a dim is the same data under every
    name, so it is kept or dropped together (and the rewrite keeps it tied)."""
    tables = [dict(gm.named_modules(remove_duplicate=False)) for gm in graphs]

    def tensor(target: str) -> Any:
        owner, attr = split_target(target)
        return next(getattr(t[owner], attr) for t in tables if hasattr(t.get(owner), attr))

    by_tensor: dict[tuple[int, int], list] = {}
    for slot in ctx.slots.values():
        by_tensor.setdefault((id(tensor(slot.target)), slot.dim), []).append(slot)
    for slots in by_tensor.values():
        first = slots[0]
        for other in slots[1:]:
            if other.ids.numel() == first.ids.numel():
                ctx.unify(first.ids, other.ids)
                first.writes = other.writes = first.writes or other.writes
            else:
                reason = f"{first.target} and {other.target} are one tensor used with different channel counts"
                ctx.pin(first.ids, reason)
                ctx.pin(other.ids, reason)


class ChannelAnalysisPass:
    name = "channels"
    requires = ("graph",)
    provides = ("channels",)

    def __call__(self, state: CompileState) -> None:
        gm = state.graph
        ctx = AnalysisContext(gm, whole_heads=state.config.heads == "whole")
        self.opaque_attributes: set[str] = set()
        self.walk(gm, ctx, state)
        graphs = [gm]
        if state.train_graph is not None:  # the same ids: a parameter means the same channels in both modes
            ctx.walk("train", state.train_graph)
            self.walk(state.train_graph, ctx, state)
            graphs.append(state.train_graph)
        if state.train_graph is None and state.contract is not None:  # training mode computes the same
            train = state.config.train_outputs
            state.contract = dataclasses.replace(
                state.contract, train=state.contract.eval if train is None else resolve(train, self.eval_structure))
        tie_shared_tensors(ctx, graphs)
        ignored = resolve_ignore(gm, tuple(state.config.ignore), state.model)
        for slot in ctx.slots.values():
            owner = owner_of(slot.target)
            if any(owner == m or owner.startswith(m + ".") for m in ignored):
                ctx.pin(slot.ids, f"module {owner!r} is ignored")
            elif slot.target in self.opaque_attributes:
                ctx.pin(slot.ids, f"{slot.target!r} is also read directly in forward")
        state.channels = ctx.finish()

    def walk(self, gm: fx.GraphModule, ctx: AnalysisContext, state: CompileState) -> None:
        """Every node in graph order, but a parameter read in forward just
        before its first reader: by then what it meets is known (timm reads
        ``self.pos_embed`` before it computes the tokens it is added to)."""
        for node in gm.graph.nodes:
            if node.op == "get_attr" and node.users:
                continue
            for arg in node.all_input_nodes:
                if arg.op == "get_attr" and arg.name not in ctx.codes:
                    self.record(arg, gm, ctx, state)
            self.record(node, gm, ctx, state)

    def record(self, node: fx.Node, gm: fx.GraphModule, ctx: AnalysisContext, state: CompileState) -> None:
        code = self.visit(node, ctx, state)
        ctx.codes[node.name] = code
        first = node.args[0] if node.args else None
        if isinstance(first, fx.Node) and isinstance(code, torch.Tensor) and mutates_first_arg(node, gm, ctx.modules):
            # Later readers of the mutated input see the op's result.
            ctx.codes[first.name] = code

    def visit(self, node: fx.Node, ctx: AnalysisContext, state: CompileState) -> Any:
        if node.op == "placeholder":
            return opaque(node, ctx, f"reaches the model input {node.name!r}")
        if node.op == "get_attr":
            return self.attribute(node, ctx)
        if node.op == "output":
            self.outputs(node, ctx, state)
            return None
        if not has_tensor(value(node)):
            return None
        rule = RULES.lookup(node, ctx.gm, ctx.modules)
        code = None
        if rule is not None:
            try:
                code = rule.analyze(node, ctx)
            except Exception as exc:  # a rule that fails must not make a wrong model
                if os.environ.get("GRAPHPRUNE_STRICT_RULES"):
                    raise
                state.notes.append(f"rule {rule.name!r} failed on node {node.name} ({exc}); its channels are pinned")
                code = None
            if code is not None:
                ctx.rule_names.setdefault(node.name, rule.name)
        if code is None:
            ctx.rule_names[node.name] = UNKNOWN.name
            ctx.unknown.add(node.name)
            code = UNKNOWN.analyze(node, ctx)
        return code

    @staticmethod
    def _claims(user: fx.Node, attribute: fx.Node, ctx: AnalysisContext) -> bool:
        rule = RULES.lookup(user, ctx.gm, ctx.modules)
        parameters = getattr(rule, "parameters", None)
        return parameters is not None and attribute in parameters(user)

    def outputs(self, node: fx.Node, ctx: AnalysisContext, state: CompileState) -> None:
        """Pin what reaches an output of the contract; note the other outputs."""
        structure = fx.node.map_arg(node.args[0], value)
        paths = self.contract(state, ctx.mode, structure)
        for path, code in leaves(fx.node.map_arg(node.args[0], ctx.code)):
            if not isinstance(code, torch.Tensor):
                continue
            if paths is None or path in paths:
                ctx.pin_code(code, "reaches the model output")
            else:
                ctx.auxiliary[describe(path) + (" in training mode" if ctx.mode == "train" else "")] = code

    def contract(self, state: CompileState, mode: str, structure: Any) -> tuple | None:
        """The contract's leaf paths for ``mode`` (see :mod:`graphprune.contract`)."""
        config = state.config
        if mode == "eval":
            self.eval_structure = structure
            selector = config.outputs if config.outputs is not None else defaults(state.model, structure)[0]
            paths = resolve(selector, structure)
        elif config.train_outputs is not None:
            paths = resolve(config.train_outputs, structure)
        elif config.outputs is None:
            paths = resolve(defaults(state.model, self.eval_structure)[1], structure)
        else:  # the eval contract, where it names training outputs too; else every one
            try:
                paths = resolve(config.outputs, structure)
            except ConfigError:
                paths = None
        state.contract = dataclasses.replace(state.contract or Contract(), **{mode: paths})
        return paths

    @staticmethod
    def attribute_channel_dim(node: fx.Node, meta: TensorMeta, ctx: AnalysisContext) -> int | None:
        """The dim of a parameter read in forward that holds channels: its one
        dim of size > 1, or, where it has several (a ViT's position embedding,
        tokens x channels), the one along which the channels of what it meets
        vary (broadcasting aligns the trailing dims); None where that is not one dim."""
        big = [d for d, s in enumerate(meta.shape) if s > 1]
        if len(big) == 1:
            return big[0]
        along = set()
        for user in node.users:
            for arg in tensor_args(user):
                code = ctx.code(arg) if arg is not node else None
                if isinstance(code, torch.Tensor):
                    along |= {d - (code.ndim - meta.ndim) for d in ids.varying_dims(code)}
        along &= set(big)
        return along.pop() if len(along) == 1 else None

    def attribute(self, node: fx.Node, ctx: AnalysisContext) -> Any:
        """A parameter or buffer read in ``forward`` (ConvNeXt's layer scale, a
        bias added by hand): sliceable along its one non-trivial dim.

        An attribute that only feeds ops which take it as their own parameter
        (``aten.conv2d(x, weight, bias)`` in an exported graph) is left to
        those ops' rules."""
        meta = value(node)
        if not isinstance(meta, TensorMeta):
            return None
        if node.users and all(self._claims(user, node, ctx) for user in node.users):
            return None
        dim = self.attribute_channel_dim(node, meta, ctx)
        if dim is None:
            self.opaque_attributes.add(str(node.target))
            return opaque(node, ctx, f"constant tensor {node.target!r} is used in forward")
        raw = ctx.fresh(meta.shape[dim])
        ctx.add_slot(str(node.target), dim, raw, writes=True, kind="param")
        shape = [1] * meta.ndim
        shape[dim] = meta.shape[dim]
        return ids.encode(raw.reshape(shape), True)
