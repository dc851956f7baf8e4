"""Channel-identity tensors: the data the channel analysis propagates.

Every element of every tensor in the traced graph carries a *raw channel id*
(an integer naming the channel that element belongs to) and a *zero bit*
(whether the element is exactly zero in the masked model when that channel is
dropped). Both travel together in one int64 *code* tensor::

    code = raw_id * 2 + zero_bit

so a layout op (view, cat, permute, channel shuffle, ...) can be run on the
code tensor itself and moves ids and zero bits together.

Code tensors are kept *compressed*: a dimension along which the code does not
vary is stored with size 1, so a conv output of shape ``(N, C, H, W)`` costs
``C`` integers, not ``N*C*H*W``. A compressed code broadcasts against the real
shape.

Raw id 0 is reserved and never handed out (its class is always pinned).
Graph inputs, constants and outputs of ops without a rule get fresh ids that
are pinned with a reason, so a pinned channel says why.
"""

from __future__ import annotations

import torch

PINNED = 0


def encode(ids: torch.Tensor, zero: torch.Tensor | bool) -> torch.Tensor:
    if isinstance(zero, bool):
        return ids * 2 + int(zero)
    return ids * 2 + zero.to(torch.int64)


def raw_ids(code: torch.Tensor) -> torch.Tensor:
    return code >> 1


def zero_bits(code: torch.Tensor) -> torch.Tensor:
    return (code & 1).bool()


def with_zero(code: torch.Tensor, zero: bool) -> torch.Tensor:
    """The same ids with every zero bit set to ``zero``."""
    return (code & ~1) | int(zero)


def compress(code: torch.Tensor) -> torch.Tensor:
    """Shrink every dimension along which ``code`` is constant to size 1."""
    for dim in range(code.ndim):
        if code.shape[dim] > 1:
            first = code.narrow(dim, 0, 1)
            if bool((code == first).all()):
                code = first
    return code.contiguous()


def materialize(code: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The full-size code tensor for a tensor of ``shape``."""
    return code.expand(tuple(shape)).contiguous()


def expand_dims(code: torch.Tensor, shape: torch.Size | tuple[int, ...], dims: set[int] | None) -> torch.Tensor:
    """``code`` at full size along ``dims`` only (every dim when ``dims`` is
    None); other dims keep their compressed size. An op that treats those
    other dims alike at every position gives the same codes, broadcast, as
    on the full-size tensor, for a fraction of the work."""
    if dims is None or code.ndim != len(shape):
        return materialize(code, shape)
    return code.expand(tuple(s if d in dims else code.shape[d] for d, s in enumerate(shape)))


def varying_dims(code: torch.Tensor) -> list[int]:
    """Dimensions along which a compressed code changes."""
    return [d for d in range(code.ndim) if code.shape[d] > 1]


def distinct_runs(code: torch.Tensor, dim: int) -> int:
    """How many runs of equal slices ``code`` has along ``dim``."""
    if code.shape[dim] <= 1:
        return 1
    changes = (code.diff(dim=dim) != 0)
    other = [d for d in range(code.ndim) if d != dim]
    if other:
        changes = changes.any(dim=tuple(other)) if changes.ndim > 1 else changes
    return int(changes.sum()) + 1


def connected_components(num_nodes: int, edges_a: torch.Tensor, edges_b: torch.Tensor) -> torch.Tensor:
    """Label each node 0..num_nodes-1 with the smallest node of its component.

    Vectorised hooking and pointer jumping (Shiloach-Vishkin style): a few
    rounds over the edge list, no Python loop per node. Node 0 is always its
    own component's label, so the pinned id keeps label 0.
    """
    parent = torch.arange(num_nodes, dtype=torch.int64)
    if edges_a.numel() == 0:
        return parent
    while True:
        pa, pb = parent[edges_a], parent[edges_b]
        low, high = torch.minimum(pa, pb), torch.maximum(pa, pb)
        before = parent.clone()
        parent.scatter_reduce_(0, high, low, reduce="amin")
        while True:  # pointer jumping: every node points at its root
            grand = parent[parent]
            if torch.equal(grand, parent):
                break
            parent = grand
        if torch.equal(parent, before):
            return parent


def end_to_end(tensors: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensors flattened end to end, and for each element the index of
    its tensor: one tensor op for what would be one op per tensor (slot ids,
    producer ids)."""
    if not tensors:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty
    lengths = torch.tensor([t.numel() for t in tensors])
    return torch.cat([t.reshape(-1) for t in tensors]), torch.repeat_interleave(torch.arange(len(tensors)), lengths)
