"""Compact layers: what a pruned layer becomes where the standard module
cannot hold its pruned shape (a norm whose statistics count the dropped
channels, an attention whose model dim is narrower than its heads).

A compact layer keeps the replaced layer's parameter and submodule names, so
state dicts keep their keys. The rewrite pass builds one in the compact
graph; the apply pass puts it, bound to the user's (sliced) tensors, into the
user's model, and the report lists it.
"""

from __future__ import annotations

import copy

import torch.nn as nn


class CompactLayer(nn.Module):
    """Base of the compact layers (see the module docstring)."""

    #: what the report says of it
    why = "it holds a pruned shape the standard module cannot"

    def rebind(self, layer: nn.Module) -> CompactLayer:
        """This compact layer on ``layer``'s parameters, buffers and submodules (already sliced)."""
        twin = copy.copy(self)
        twin._parameters, twin._buffers, twin._modules = (dict(layer._parameters), dict(layer._buffers),
                                                          dict(layer._modules))
        twin.training = layer.training
        return twin
