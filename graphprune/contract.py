"""The output contract: which of a model's outputs the compact model must reproduce exactly.

Every tensor a model returns is an output, and by default its channels are
pinned (a detector's channels mean something). Not every returned tensor is
deployed, though: ultralytics' ``DetectionModel`` returns its predictions and
also a dict of raw head outputs and the neck's feature maps (``feats``),
which pins most of the neck. The contract names the outputs that matter;
channels that reach only the others may be pruned (those outputs then have
fewer channels), and verification compares the contract outputs.

A selector is ``None`` (every output), an index or key into the output
(``0``, ``"out"``), a path (``(1, "feats", 0)`` or ``"1.feats.0"``), a list
of those, or a function that picks from the output (``lambda out: out[0]``).
A path is a tuple of keys: indices into tuples and lists (or a namedtuple's
field names), keys into dicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .errors import ConfigError

Path = tuple


@dataclass(frozen=True)
class Contract:
    """Resolved contract: the leaf paths of the eval-mode and training-mode
    outputs that must match (``None``: every output of that mode)."""

    eval: tuple[Path, ...] | None = None
    train: tuple[Path, ...] | None = None


def leaves(tree: Any, path: Path = ()) -> list[tuple[Path, Any]]:
    """(path, leaf) for every leaf of a nested output, in order."""
    if isinstance(tree, dict):
        return [item for key, value in tree.items() for item in leaves(value, (*path, key))]
    if isinstance(tree, (list, tuple)):
        return [item for i, value in enumerate(tree) for item in leaves(value, (*path, i))]
    return [(path, tree)]


def describe(path: Path) -> str:
    """``(1, "feats", 0)`` -> ``output[1]['feats'][0]``."""
    return "output" + "".join(f"[{k!r}]" for k in path)


def _step(tree: Any, key: Any) -> Any:
    if isinstance(tree, dict):
        if key not in tree:
            raise KeyError(key)
        return tree[key]
    if isinstance(tree, (list, tuple)):
        if isinstance(key, str) and hasattr(tree, "_fields") and key in tree._fields:
            return getattr(tree, key)
        if isinstance(key, str) and key.lstrip("-").isdigit():
            key = int(key)
        return tree[key]
    raise KeyError(key)


def _canonical(tree: Any, path: Path) -> Path:
    """``path`` with namedtuple field names and digit strings as indices."""
    out = []
    for key in path:
        if isinstance(tree, (list, tuple)) and not isinstance(key, int):
            key = tree._fields.index(key) if hasattr(tree, "_fields") and key in tree._fields else int(key)
        out.append(key)
        tree = tree[key]
    return tuple(out)


class _Picked:
    """A stand-in leaf, for a selector function to pick."""

    def __init__(self, path: Path):
        self.path = path


def _stand_ins(tree: Any, path: Path = ()) -> Any:
    if isinstance(tree, dict):
        return {k: _stand_ins(v, (*path, k)) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [_stand_ins(v, (*path, i)) for i, v in enumerate(tree)]
        return type(tree)(*items) if hasattr(tree, "_fields") else type(tree)(items)
    return _Picked(path)


def _paths(selector: Any) -> list[Path]:
    if isinstance(selector, (list, set)):
        return [p for s in selector for p in _paths(s)]
    if isinstance(selector, tuple):
        return [selector]
    if isinstance(selector, str) and "." in selector:
        return [tuple(selector.split("."))]
    if isinstance(selector, (int, str)) and not isinstance(selector, bool):
        return [(selector,)]
    raise ConfigError(f"outputs takes an index, a key, a path, a list of those or a function; got {selector!r}")


def resolve(selector: Any, structure: Any) -> tuple[Path, ...] | None:
    """The leaf paths of ``structure`` (an output, or its recorded shapes) that ``selector`` names."""
    if selector is None or selector == "all":
        return None
    if callable(selector):
        try:
            picked = selector(_stand_ins(structure))
        except Exception as exc:
            raise ConfigError(f"the outputs function failed on the model's output ({exc}); it must only pick "
                              "from it, as in lambda out: out[0] or lambda out: out['boxes']") from None
        found = [leaf.path for _, leaf in leaves(picked) if isinstance(leaf, _Picked)]
        if not found:
            raise ConfigError("the outputs function picked no output of the model")
        return tuple(found)
    every = [p for p, _ in leaves(structure)]
    chosen: list[Path] = []
    for path in _paths(selector):
        try:
            tree = structure
            for key in path:
                tree = _step(tree, key)
            prefix = _canonical(structure, path)
        except (KeyError, IndexError, ValueError, TypeError):
            shown = ", ".join(describe(p) for p in every[:8]) + (", ..." if len(every) > 8 else "")
            raise ConfigError(f"outputs names {describe(path)}, which the model does not return; "
                              f"its outputs are {shown}") from None
        chosen += [p for p in every if p[: len(prefix)] == prefix and p not in chosen]
    return tuple(chosen)


def pick(output: Any, paths: tuple[Path, ...] | None) -> Any:
    """The leaves of ``output`` at ``paths`` (all of ``output`` for None)."""
    if paths is None:
        return output
    found = dict(leaves(output))
    return [found[p] for p in paths if p in found]


def is_ultralytics(model: nn.Module) -> bool:
    return type(model).__module__.startswith("ultralytics.")


def defaults(model: nn.Module, eval_structure: Any) -> tuple[Any, Any]:
    """The contract a model's source implies: ultralytics models, what their
    own ONNX export emits (the predictions, and a segmenter's prototypes:
    ``output[0]``) and in training what their loss reads (all but the feature
    maps, whose shapes only it reads); torchvision segmenters, ``out``;
    everything else, every output."""
    if is_ultralytics(model):
        if isinstance(eval_structure, (tuple, list)) and len(eval_structure) == 2 and isinstance(eval_structure[1], dict):
            return 0, _without_feats
        return None, _without_feats
    if isinstance(eval_structure, dict) and "out" in eval_structure and type(model).__module__.startswith(
            "torchvision.models.segmentation"):
        return "out", "out"
    return None, None


def _without_feats(out: Any) -> list:
    return [leaf for path, leaf in leaves(out) if "feats" not in path]


class ContractOutputs(nn.Module):
    """``model`` returning only the outputs at ``paths`` (what is deployed)."""

    def __init__(self, model: nn.Module, paths: tuple):
        super().__init__()
        self.model, self.paths = model, paths

    def forward(self, *inputs: torch.Tensor) -> Any:
        picked = pick(self.model(*inputs), self.paths)
        return picked[0] if len(picked) == 1 else tuple(picked)
