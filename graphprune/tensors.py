"""Reading and replacing parameters and buffers by qualified name."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn


def _split(target: str) -> tuple[str, str]:
    return tuple(target.rsplit(".", 1)) if "." in target else ("", target)  # type: ignore[return-value]


def fresh_copy(inputs: tuple) -> tuple:
    """The inputs with every tensor cloned: a model may write its input in
    place (``x.relu_()``), which must change neither the caller's tensors nor
    the next run that reads them."""
    return tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in inputs)


def _owner(root: nn.Module, name: str, modules: Mapping[str, nn.Module] | None) -> nn.Module:
    module = modules.get(name) if modules is not None else None
    return module if module is not None else root.get_submodule(name)


def get_tensor(root: nn.Module, target: str, modules: Mapping[str, nn.Module] | None = None) -> torch.Tensor:
    """``modules``: ``dict(root.named_modules())``, to skip walking the path
    when reading many tensors."""
    owner, attr = _split(target)
    return getattr(_owner(root, owner, modules), attr)


def set_tensor(root: nn.Module, target: str, new: torch.Tensor,
               modules: Mapping[str, nn.Module] | None = None) -> None:
    """Replace a parameter (keeping it a trainable Parameter) or a buffer."""
    owner, attr = _split(target)
    module = _owner(root, owner, modules)
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    elif attr in module._buffers:
        module._buffers[attr] = new
    else:
        setattr(module, attr, new)
