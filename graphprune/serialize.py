"""Saving and loading compact models without pickle.

A compact model is saved as a folder:

- ``plan.json``: format version, library versions, the example input shapes,
  the compile options, and for every parameter or buffer dimension that was
  sliced its original size and the kept indices;
- ``weights.pt``: the compact model's state dict (plain tensors, loaded with
  ``torch.load(..., weights_only=True)``: no code runs on load).

Loading rebuilds the compact architecture from the *original* one: trace and
analyse the original model again, turn the saved indices back into kept
channels (checking that coupled slots agree), rewrite, then load the weights
with every key and shape checked. The architecture survives a restart, which
the paper's code (a pickled module) does not guarantee.

Example::

    result = graphprune.prune(model, x, ratio=0.5)
    graphprune.save(result, "resnet18-pruned")
    ...
    compact = graphprune.load("resnet18-pruned", torchvision.models.resnet18())
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .analysis import ChannelGraph
from .config import PruneConfig
from .errors import LoadError, first_line
from .passes.fold import apply_folds, apply_folds_to_model
from .pipeline import CompileState, Pipeline
from .plan import BiasFold, PruningPlan
from .tensors import get_tensor

if TYPE_CHECKING:
    from .api import PruneResult

FORMAT = "graphprune.compact"
VERSION = 1
PLAN_FILE = "plan.json"
WEIGHTS_FILE = "weights.pt"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def encode_indices(indices: list[int]) -> str:
    """Sorted indices as compact ranges: [0, 1, 2, 5, 7, 8] -> "0-2,5,7-8"."""
    parts, start = [], None
    for i, value in enumerate(indices):
        if start is None:
            start = value
        if i + 1 == len(indices) or indices[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}-{value}")
            start = None
    return ",".join(parts)


def decode_indices(text: str) -> list[int]:
    out: list[int] = []
    for part in filter(None, text.split(",")):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if last < first:
            raise ValueError(f"bad range {part!r}")
        out.extend(range(first, last + 1))
    return out


def plan_document(result: PruneResult) -> dict:
    """The JSON-ready description of a compile: what ``save`` writes."""
    import torchvision

    from . import __version__

    state: CompileState = result.state
    plan: PruningPlan = result.plan
    kept = {}
    for slot in plan.channels.slots:
        mask = plan.kept(slot.ids)
        if bool(mask.all()):
            continue
        kept[f"{slot.target}:{slot.dim}"] = {
            "size": slot.ids.numel(),
            "indices": encode_indices(mask.nonzero().flatten().tolist()),
        }
    config = state.config
    return {
        "format": FORMAT,
        "version": VERSION,
        "versions": {"graphprune": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__},
        "model": type(state.model).__name__,
        "frontend": state.frontend,
        "example_inputs": [
            {"shape": list(x.shape), "dtype": _dtype_name(x.dtype)}
            for x in state.example_inputs
            if isinstance(x, torch.Tensor)
        ],
        "config": {
            "ratio": config.ratio,
            "criterion": config.criterion,
            "mode": config.mode,
            "coupling": config.coupling,
            "ignore": list(config.ignore),
            "round_to": config.round_to,
        },
        "kept": kept,
        # layers that gained a bias from folded constants (mask_bn=False)
        "folded_biases": [[f.node, f.weight, f.out_dim] for f in (state.folds or []) if f.bias is None],
    }


def save(result: PruneResult, path: str | os.PathLike) -> Path:
    """Save a :class:`~graphprune.api.PruneResult`'s compact model to folder ``path``.

    The folder is written whole or not at all (a temporary folder renamed into
    place). Returns the folder's path.
    """
    path = Path(path)
    document = plan_document(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (staging / PLAN_FILE).write_text(json.dumps(document, indent=1))
        state_dict = {k: v.detach().clone().contiguous() for k, v in result.compact.state_dict().items()}
        torch.save(state_dict, staging / WEIGHTS_FILE)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _read_plan(path: Path) -> dict:
    plan_path = path / PLAN_FILE
    if not plan_path.is_file():
        raise LoadError(f"{path} is not a saved graphprune model: {PLAN_FILE} is missing")
    try:
        document = json.loads(plan_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoadError(f"{plan_path} is not valid JSON ({exc}); the file is corrupted") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise LoadError(f"{plan_path} is not a graphprune plan (format {document.get('format')!r})")
    if document.get("version") != VERSION:
        raise LoadError(f"{plan_path} has plan version {document.get('version')!r}; this graphprune reads {VERSION}")
    return document


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise LoadError(f"{path} has no {WEIGHTS_FILE}")
    try:
        state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = first_line(exc)
        raise LoadError(f"cannot read {weights_path}: it is truncated, corrupted or not a state dict ({first})") from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise LoadError(f"{weights_path} does not hold a state dict of tensors")
    return state_dict


def _class_kept_from_document(channels: ChannelGraph, kept: dict) -> torch.Tensor:
    """Kept classes from saved per-slot indices; every coupled slot must agree."""
    slots = {f"{s.target}:{s.dim}": s for s in channels.slots}
    unknown = sorted(set(kept) - set(slots))
    if unknown:
        raise LoadError(
            f"the plan slices {unknown[0]!r}, which this model does not have: "
            "the saved model was pruned from another architecture"
        )
    class_kept = torch.ones(channels.num_classes, dtype=torch.bool)
    masks = {}
    for key, entry in kept.items():
        slot = slots[key]
        if entry.get("size") != slot.ids.numel():
            raise LoadError(
                f"{key} had {entry.get('size')} channels when saved but has {slot.ids.numel()} in this model: "
                "the saved model was pruned from another architecture or configuration"
            )
        try:
            indices = torch.as_tensor(decode_indices(entry["indices"]), dtype=torch.int64)
        except (KeyError, ValueError, TypeError, AttributeError):
            raise LoadError(f"the plan's indices for {key} are malformed: plan.json was edited or corrupted") from None
        if indices.numel() and (indices.min() < 0 or indices.max() >= slot.ids.numel()):
            raise LoadError(f"the plan's indices for {key} are out of range: plan.json was edited or corrupted")
        mask = torch.zeros(slot.ids.numel(), dtype=torch.bool)
        mask[indices] = True
        masks[key] = mask
        class_kept[channels.class_of[slot.ids[~mask]]] = False
    for key, slot in slots.items():
        expected = masks.get(key, torch.ones(slot.ids.numel(), dtype=torch.bool))
        if not torch.equal(class_kept[channels.class_of[slot.ids]], expected):
            raise LoadError(
                f"the plan's indices for {key} disagree with the channels coupled to it: "
                "plan.json was edited or does not belong to this model"
            )
    return class_kept


class SavedFolds:
    """The fold pass of a load: the layers that gained a bias get one (of
    zeros; the saved weights fill it), instead of computing folds again."""

    name = "fold"
    requires = ("compact", "compact_graph", "plan")
    provides = ("folds",)

    def __init__(self, folds: list[BiasFold]):
        self.folds = folds

    def __call__(self, state: CompileState) -> None:
        state.folds = self.folds
        if self.folds:
            apply_folds(state.compact_graph, state.plan, self.folds)
            state.compact_graph.recompile()
            apply_folds_to_model(state.compact, state.plan, self.folds)


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Rebuild a saved compact model from an instance of its original architecture.

    ``model`` only provides the architecture (its weights are replaced by the
    saved ones). Raises :class:`~graphprune.errors.LoadError` with the reason
    when the files are missing, corrupted, edited, or belong to another
    architecture; never returns a silently wrong model.
    """
    path = Path(path)
    document = _read_plan(path)
    state_dict = _read_weights(path)
    try:
        inputs = tuple(
            torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"])) for spec in document["example_inputs"]
        )
        config = PruneConfig(ignore=tuple(document["config"].get("ignore", ())), verify=False)
    except (KeyError, TypeError, AttributeError) as exc:
        raise LoadError(f"{path / PLAN_FILE} is missing or has a malformed field ({exc})") from None

    state = CompileState(model=model, example_inputs=inputs, config=config)
    pipeline = Pipeline.default()
    pipeline.until("channels").run(state)
    class_kept = _class_kept_from_document(state.channels, document.get("kept", {}))
    state.plan = PruningPlan(state.channels, [], class_kept, ~class_kept[state.channels.class_of], "loaded", "")
    try:
        folds = [
            BiasFold(str(node), str(weight), None, int(out_dim), torch.zeros(get_tensor(state.graph, weight).shape[0]), True)
            for node, weight, out_dim in document.get("folded_biases", [])
        ]
    except (TypeError, ValueError, AttributeError) as exc:
        raise LoadError(f"{path / PLAN_FILE} has a malformed folded_biases field ({exc})") from None
    Pipeline([pipeline.get("rewrite"), pipeline.get("apply"), SavedFolds(folds)]).run(state)
    compact = state.compact

    expected = compact.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        raise LoadError(
            f"{path / WEIGHTS_FILE} does not match the rebuilt model: "
            + (f"missing {missing[:3]}" if missing else "")
            + (" " if missing and extra else "")
            + (f"unexpected {extra[:3]}" if extra else "")
        )
    for key, tensor in expected.items():
        if tensor.shape != state_dict[key].shape:
            raise LoadError(
                f"{key} has shape {tuple(state_dict[key].shape)} in {WEIGHTS_FILE} but "
                f"{tuple(tensor.shape)} in the rebuilt model: the weights and the plan do not belong together"
            )
    compact.load_state_dict(state_dict, strict=True)
    return compact.eval()
