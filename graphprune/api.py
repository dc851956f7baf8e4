"""The public entry point: :func:`prune`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from . import ids
from .analysis import ChannelGraph
from .budget import BudgetResult
from .config import PruneConfig
from .deploy import resolve_round_to
from .errors import ConfigError, ModelError
from .numerics import Verification, as_inputs
from .pipeline import CompileState, Pipeline
from .plan import PruningPlan

# Not part of building the compact model: checking it, measuring it, exporting
# it, and the masked model (a trainable reference for verification and
# fine-tuning, built after the compact model).
NOT_COMPILE = frozenset({"mask", "verify", "measure", "export", "latency"})


@dataclass
class Report:
    """What a compile did and measured."""

    frontend: str | None
    params_before: int | None
    params_after: int | None
    flops_before: int | None
    flops_after: int | None
    max_abs_error: float | None
    max_rel_error: float | None
    exact: bool | None
    verification: Verification | None
    timings: dict[str, float]
    prunable_fraction: float | None
    notes: list[str] = field(default_factory=list)
    #: with target_flops / target_latency: the target and what was achieved (see graphprune.budget)
    budget: BudgetResult | None = None
    #: modules of the compact model whose forward graphprune rebuilt: path -> why
    replaced: dict[str, str] = field(default_factory=dict)
    #: produced channels pinned, per reason (what an output contract, an ignore, an unknown op costs)
    pinned: dict[str, int] = field(default_factory=dict)
    #: outputs outside the output contract that the compact model returns with fewer channels: before, after
    reduced_outputs: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: with heads="whole": per attention (module path), the heads dropped (indices) and how many it had
    heads: dict[str, tuple[tuple[int, ...], int]] = field(default_factory=dict)

    @property
    def compile_seconds(self) -> float:
        """Time to the compact model: every pass but building the masked model,
        checking, measuring and exporting."""
        return sum(v for k, v in self.timings.items() if k not in NOT_COMPILE)

    def __str__(self) -> str:
        def ratio(a: int | None, b: int | None) -> str:
            return f"{a:,} -> {b:,} ({b / a:.1%})" if a and b is not None else "n/a"

        lines = [
            f"frontend: {self.frontend}",
            f"params:   {ratio(self.params_before, self.params_after)}",
            f"FLOPs:    {ratio(self.flops_before, self.flops_after)}",
            f"verify:   {self.verification if self.verification is not None else 'skipped'}",
            "time:     " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.timings.items()),
        ]
        if self.budget is not None:
            lines.append(f"budget:   {self.budget}")
        lines += [f"rebuilt:  {path}: {why}" for path, why in self.replaced.items()]
        if self.pinned:
            top = sorted(self.pinned.items(), key=lambda kv: -kv[1])[:3]
            lines.append(f"pinned:   {sum(self.pinned.values())} produced channels; most: "
                         + "; ".join(f"{n} {why}" for why, n in top))
        lines += [f"reduced:  {where} returns {a} of {b} channels (not in the output contract)"
                  for where, (b, a) in self.reduced_outputs.items()]
        lines += [f"heads:    {where}: dropped {len(dropped)} of {total}: {list(dropped)}"
                  for where, (dropped, total) in self.heads.items() if dropped]
        lines += [f"note:     {n}" for n in self.notes]
        return "\n".join(lines)


@dataclass
class PruneResult:
    """``compact``: the smaller model, a copy of the user's own model (same
    class, module names, attributes and forward) with the plan applied;
    ``masked``: the user's model with dropped channels held at zero, to
    fine-tune; ``compact_graph``: the compact model as a traced
    ``fx.GraphModule`` (what ONNX export writes); ``plan``: what was kept and
    why; ``report``: numbers."""

    compact: nn.Module
    plan: PruningPlan
    report: Report
    state: CompileState

    @property
    def masked(self) -> nn.Module:
        """Built on first use (a copy of the model as it was at compile time): see the mask pass."""
        return self.state.masked_model()

    @property
    def compact_graph(self) -> fx.GraphModule:
        return self.state.compact_graph


def _ignore_names(model: nn.Module, ignore: Iterable[Any]) -> tuple[str, ...]:
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for item in ignore:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, nn.Module):
            if id(item) not in names:
                raise ConfigError(f"ignore lists a {type(item).__name__} that is not part of the model")
            out.append(names[id(item)])
        else:
            raise ConfigError(f"ignore takes module names or modules; got {item!r}")
    return tuple(out)


def check_finite(model: nn.Module) -> None:
    """Refuse a model with NaN or infinite weights: its outputs are NaN, so no
    comparison of compact and masked model could mean anything."""
    tensors = [("parameter", n, t) for n, t in model.named_parameters()]
    tensors += [("buffer", n, t) for n, t in model.named_buffers()]
    for kind, name, tensor in tensors:
        if tensor.is_floating_point() or tensor.is_complex():
            if bool(torch.isfinite(tensor.detach().sum())):
                continue  # a NaN or inf makes the sum non-finite (so does overflow: then look closer)
            finite = torch.isfinite(tensor.detach())
            if not bool(finite.all()):
                nan = int(torch.isnan(tensor.detach()).sum())
                raise ModelError(
                    f"{kind} {name!r} has {nan} NaN and {int((~finite).sum()) - nan} infinite values; "
                    "fix the weights (reload the checkpoint, or re-initialise that layer) and prune again"
                )


def check_finite_inputs(inputs: tuple) -> None:
    for i, x in enumerate(inputs):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
            raise ConfigError(
                f"example input {i} holds NaN or infinite values, so no output could be checked; "
                "pass real data or torch.randn of the same shape"
            )


def prune(
    model: nn.Module,
    example_inputs: torch.Tensor | tuple,
    ratio: float = 0.5,
    criterion: str = "l1",
    mode: str = "per_layer",
    coupling: str = "union",
    heads: str = "dims",
    ignore: Iterable[Any] = (),
    min_channels: int = 1,
    round_to: int | str | None = None,
    ratios: Mapping[str, float] | None = None,
    mask_bn: bool = True,
    fold_constants: bool = True,
    target_flops: float | None = None,
    target_latency: float | None = None,
    trade_flops: bool = False,
    verify: bool | str = True,
    tolerance: float = 1e-4,
    seed: int = 0,
    frontend: str = "auto",
    outputs: Any = None,
    train_outputs: Any = None,
    pipeline: Pipeline | None = None,
    progress: Callable[[str], None] | None = None,
) -> PruneResult:
    """Prune ``model`` into a physically smaller model, verified lossless.

    Example::

        import torch, torchvision, graphprune
        model = torchvision.models.resnet18()
        result = graphprune.prune(model, torch.randn(1, 3, 224, 224), ratio=0.5)
        print(result.report)          # params, FLOPs, max error, time per pass
        print(result.plan)            # groups, kept channels, what is pinned and why
        small = result.compact        # your model's class, smaller, in eval mode

    ``frontend`` is ``"auto"`` (torch.fx, then torch.export where fx fails),
    ``"fx"`` or ``"export"``. ``outputs`` names the outputs the compact model
    must reproduce (default: what the model's source deploys, see
    :mod:`graphprune.contract`); channels reaching only the others are pruned. The input model is not modified. See :class:`~graphprune.config.PruneConfig`
    for the options; ``pipeline`` runs a custom pass pipeline.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    inputs = as_inputs(example_inputs)
    round_to, note = resolve_round_to(round_to, for_onnx_runtime=target_latency is not None or (
        pipeline is not None and "export" in pipeline.names))
    config = PruneConfig(
        ratio=ratio, criterion=criterion, mode=mode, coupling=coupling, heads=heads, ignore=_ignore_names(model, ignore),
        min_channels=min_channels, round_to=round_to, ratios=dict(ratios or {}), mask_bn=mask_bn,
        fold_constants=fold_constants, target_flops=target_flops, target_latency=target_latency,
        trade_flops=trade_flops, verify=verify, tolerance=tolerance, seed=seed, frontend=frontend, outputs=outputs,
        train_outputs=train_outputs,
    )
    check_finite(model)
    check_finite_inputs(inputs)
    state = CompileState(model=model, example_inputs=inputs, config=config, notes=[note] if note else [])
    (pipeline or Pipeline.default()).run(state, progress)
    return PruneResult(state.compact, state.plan, build_report(state), state)


def build_report(state: CompileState) -> Report:
    m, v = state.measurements, state.verification
    notes = list(state.notes) + (list(state.plan.notes) if state.plan is not None else [])
    return Report(
        frontend=state.frontend,
        params_before=m.get("params_before"),
        params_after=m.get("params_after"),
        flops_before=m.get("flops_before"),
        flops_after=m.get("flops_after"),
        max_abs_error=v.max_abs_error if v is not None else None,
        max_rel_error=v.max_rel_error if v is not None else None,
        exact=v.exact if v is not None else None,
        verification=v,
        timings=dict(state.timings),
        prunable_fraction=state.channels.prunable_fraction if state.channels is not None else None,
        notes=notes,
        budget=state.budget,
        replaced=dict(state.replaced),
        pinned=pinned_by_reason(state.channels) if state.channels is not None else {},
        reduced_outputs=reduced_outputs(state),
        heads=dropped_heads(state),
    )


def dropped_heads(state: CompileState) -> dict[str, tuple[tuple[int, ...], int]]:
    """Per reshape into whole heads (module path): the heads the plan drops, and how many there were."""
    if state.channels is None or state.plan is None:
        return {}
    return {where: (tuple((~state.plan.kept(raw)).nonzero().flatten().tolist()), raw.numel())
            for where, raw in state.channels.heads.items()}


def pinned_by_reason(channels: ChannelGraph) -> dict[str, int]:
    """Produced channels pinned, per reason."""
    if not channels.producers:
        return {}
    reason = channels.reason_of[channels.class_of[torch.cat([p.ids for p in channels.producers])]]
    counts = torch.bincount(reason[reason >= 0], minlength=len(channels.reasons)).tolist()
    out: dict[str, int] = {}
    for i, n in enumerate(counts):
        if n:
            out[channels.reasons[i]] = out.get(channels.reasons[i], 0) + n
    return out


def reduced_outputs(state: CompileState) -> dict[str, tuple[int, int]]:
    """Outputs outside the contract that lose channels: (channels before, after)."""
    if state.plan is None or state.channels is None:
        return {}
    out = {}
    for where, code in state.channels.auxiliary.items():
        raw = torch.unique(ids.raw_ids(code))
        kept = int(state.plan.kept(raw).sum())
        if kept < raw.numel():
            out[where] = (raw.numel(), kept)
    return out
