"""Reading and replacing parameters and buffers by qualified name."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn


def split_target(target: str) -> tuple[str, str]:
    """``"layer1.0.conv1.weight"`` -> ``("layer1.0.conv1", "weight")``; a
    name without a dot belongs to the root module, ``""``."""
    owner, _, attr = target.rpartition(".")
    return owner, attr


def owner_of(target: str) -> str:
    """The qualified name of the module that holds tensor ``target`` (``""``: the root)."""
    return split_target(target)[0]


def _module(root: nn.Module, name: str, modules: Mapping[str, nn.Module] | None) -> nn.Module:
    module = modules.get(name) if modules is not None else None
    return module if module is not None else root.get_submodule(name)


def get_tensor(root: nn.Module, target: str, modules: Mapping[str, nn.Module] | None = None) -> torch.Tensor:
    """The parameter, buffer or tensor attribute ``target`` of ``root``
    (``modules``: ``dict(root.named_modules())``, to skip walking the path
    when reading many tensors)."""
    owner, attr = split_target(target)
    return getattr(_module(root, owner, modules), attr)


def set_tensor(root: nn.Module, target: str, new: torch.Tensor,
               modules: Mapping[str, nn.Module] | None = None) -> None:
    """Replace a parameter (keeping it a trainable Parameter) or a buffer."""
    owner, attr = split_target(target)
    module = _module(root, owner, modules)
    old = getattr(module, attr)
    if isinstance(old, nn.Parameter):
        setattr(module, attr, nn.Parameter(new, requires_grad=old.requires_grad))
    elif attr in module._buffers:
        module._buffers[attr] = new
    else:
        setattr(module, attr, new)


def retie(root: nn.Module, target: str, tensor: torch.Tensor) -> None:
    """Put ``tensor`` itself (not a copy) at ``target``: tied names stay one tensor."""
    owner, attr = split_target(target)
    module = root.get_submodule(owner)
    if attr in module._parameters:
        module._parameters[attr] = tensor
    elif attr in module._buffers:
        module._buffers[attr] = tensor
    else:
        setattr(module, attr, tensor)
