"""Score pass: the configured criterion scores every producing layer's filters.

``state.scores[weight_name]`` is one score per output channel (row) of that
layer. A user pass can replace this one or edit ``state.scores`` after it.
"""

from __future__ import annotations

import torch

from ..criteria import CRITERIA, LayerView
from ..errors import ConfigError
from ..pipeline import CompileState
from ..tensors import get_tensor, owner_of


def layer_view(gm: torch.nn.Module, producer, generator: torch.Generator,
               modules: dict[str, torch.nn.Module] | None = None) -> LayerView:
    """What the criterion sees of ``producer`` (``modules``: name -> module of
    ``gm``, to skip walking module paths)."""

    weight = get_tensor(gm, producer.weight, modules).detach()
    filters = weight.movedim(producer.filter_dim, 0)
    filters = filters.reshape(filters.shape[0], -1)
    if filters.shape[0] != producer.ids.numel():  # grouped transposed conv: rows per group
        filters = filters.repeat(producer.ids.numel() // filters.shape[0], 1)
    owner = owner_of(producer.weight)
    bias_name = f"{owner}.bias" if owner else "bias"
    try:
        bias = get_tensor(gm, bias_name, modules)
        bias = bias.detach() if bias is not None and bias.shape[:1] == filters.shape[:1] else None
    except AttributeError:
        bias = None
    norm = get_tensor(gm, producer.norm, modules).detach() if producer.norm else None
    return LayerView(producer.name, filters.float(), bias, norm, generator)


class ScorePass:
    name = "score"
    requires = ("channels",)
    provides = ("scores",)

    def __call__(self, state: CompileState) -> None:
        criterion = CRITERIA[state.config.criterion]
        generator = torch.Generator().manual_seed(state.config.seed)
        scores = {}
        # the eval graph holds most layers; a layer only training mode calls is in the model
        modules = {**dict(state.model.named_modules(remove_duplicate=False)),
                   **dict(state.graph.named_modules(remove_duplicate=False))}
        with torch.no_grad():
            for producer in state.channels.producers:
                view = layer_view(state.graph, producer, generator, modules)
                s = criterion(view).reshape(-1).float()
                if s.numel() != producer.ids.numel():
                    raise ConfigError(
                        f"criterion {state.config.criterion!r} returned {s.numel()} scores for "
                        f"{producer.name}, which has {producer.ids.numel()} output channels; "
                        "a criterion must return one score per row of layer.filters"
                    )
                scores[producer.weight] = s
        state.scores = scores
