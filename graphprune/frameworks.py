"""Size attributes of frameworks' own models that follow the pruned layers.

A layer's size attributes follow its tensors (each rule's ``fix_module``).
Some frameworks also keep channel counts on the *model* or on a block, read
by methods other than ``forward``: timm's ``num_features`` and
``head_hidden_size`` (``reset_classifier``, ``forward_head``), ultralytics'
``C2f.c`` (``forward_split``, which its ONNX export switches to). Each fixer
here names the framework by its module, so nothing imports it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

Fixer = Callable[[nn.Module, tuple], None]
FIXERS: list[tuple[str, Fixer]] = []


def register_fixer(module_prefix: str) -> Callable[[Fixer], Fixer]:
    """Run the function on every compact model whose class lives under ``module_prefix``."""
    def wrap(fixer: Fixer) -> Fixer:
        FIXERS.append((module_prefix, fixer))
        return fixer

    return wrap


def fix_frameworks(model: nn.Module, example_inputs: tuple) -> None:
    for prefix, fixer in FIXERS:
        if type(model).__module__.startswith(prefix):
            fixer(model, example_inputs)


@register_fixer("timm.")
def timm_sizes(model: nn.Module, example_inputs: tuple) -> None:
    """``num_features``: the channels ``forward_features`` returns; ``head_hidden_size``: the classifier's input."""
    if hasattr(model, "forward_features") and isinstance(getattr(model, "num_features", None), int):
        was = model.training
        model.eval()
        with torch.no_grad():
            features = model.forward_features(*example_inputs)
        model.train(was)
        if isinstance(features, torch.Tensor) and features.ndim >= 2:
            channels_last = getattr(model, "output_fmt", "NCHW") in ("NHWC", "NLC") or features.ndim == 3
            model.num_features = int(features.shape[-1] if channels_last else features.shape[1])
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, nn.Linear) and isinstance(getattr(model, "head_hidden_size", None), int):
        model.head_hidden_size = classifier.in_features


@register_fixer("ultralytics.")
def ultralytics_c2f(model: nn.Module, example_inputs: tuple) -> None:
    """A C2f kept as it is (its halves keep equal counts) still splits by ``c`` in ``forward_split``."""
    for module in model.modules():
        if hasattr(module, "forward_split") and isinstance(getattr(module, "c", None), int) and hasattr(module, "cv1"):
            module.c = module.cv1.conv.out_channels // 2
