"""Group pass: coupled channels written by the same layers form a group.

Two classes are in one group when some producer writes both (a residual
stream: every conv adding into it; a grouped conv's output). A consumer that
reads several groups (a conv after a concatenation) does not merge them: each
part of the concatenation keeps its own group and its own ratio. Where layers
read a group in pieces (YOLO's C2f splits its first conv's output in two),
the group records its parts: the classes read by the same set of layers.
"""

from __future__ import annotations

import torch

from ..analysis import ChannelGraph
from ..ids import connected_components, end_to_end
from ..pipeline import CompileState
from ..plan import Group


def _pairs(major: torch.Tensor, minor: torch.Tensor, minor_count: int) -> list[tuple[int, int]]:
    """The distinct (major, minor) pairs, sorted."""
    keys = torch.unique(major * max(minor_count, 1) + minor)
    return [divmod(k, max(minor_count, 1)) for k in keys.tolist()]


def _groups_touched(channels: ChannelGraph, group_of_class: torch.Tensor) -> list[list[int]]:
    """For each slot, the groups its channels belong to, ascending. Most
    slots lie in one group: the group changes between neighbouring ids of
    all slots laid end to end only at a few places, and only the slots with
    such a change inside need a sort of their own."""
    slots = channels.slots
    lengths = [slot.ids.numel() for slot in slots]
    if not slots or not sum(lengths):
        return [[] for _ in slots]
    group = group_of_class[channels.class_of[torch.cat([slot.ids.reshape(-1) for slot in slots])]]
    ends = torch.tensor(lengths).cumsum(0)
    starts = ends - torch.tensor(lengths)
    changes = (group[1:] != group[:-1]).nonzero().flatten() + 1
    at_start = torch.zeros(group.numel() + 1, dtype=torch.bool)
    at_start[starts] = True
    changes = changes[~at_start[changes]]  # a change where a slot begins is not inside it
    mixed = set(torch.searchsorted(ends, changes, right=True).tolist())
    first = group[starts.clamp_max(group.numel() - 1)].tolist()
    out: list[list[int]] = []
    for s, slot in enumerate(slots):
        if s in mixed:
            touched = torch.unique(group_of_class[channels.class_of[slot.ids]]).tolist()
            out.append([g for g in touched if g >= 0])
        else:
            out.append([first[s]] if lengths[s] and first[s] >= 0 else [])
    return out


def form_groups(channels: ChannelGraph) -> list[Group]:
    # Whole-model tensor ops, not one op per layer: a Python loop per layer
    # with a few small tensor ops each was most of this pass.
    n = channels.num_classes
    producers = [p for p in channels.producers if p.ids.numel()]
    raw, producer_of = end_to_end([p.ids for p in producers])
    cls = channels.class_of[raw]
    first = torch.full((len(producers),), n, dtype=torch.int64).scatter_reduce_(0, producer_of, cls, reduce="amin")
    label = connected_components(n, first[producer_of], cls)

    order: dict[int, int] = {}  # component label -> group index, in producer order
    producers_of: list[list[str]] = []
    for p, root in zip(producers, label[first].tolist()):
        if root not in order:
            order[root] = len(order)
            producers_of.append([])
        producers_of[order[root]].append(p.name)
    index_of_label = torch.full((n,), -1, dtype=torch.int64)
    if order:
        index_of_label[torch.tensor(list(order))] = torch.tensor(list(order.values()))
    group_of_class = index_of_label[label]

    members_of: list[list[str]] = [[] for _ in order]
    for slot, touched in zip(channels.slots, _groups_touched(channels, group_of_class)):
        for g in touched:
            members_of[g].append(slot.target if slot.dim == 0 else f"{slot.target}[dim {slot.dim}]")

    # The distinct reasons pinning each group's classes, first cause first.
    reasons_of: list[list[str]] = [[] for _ in order]
    pinned_classes = (channels.pinned & (group_of_class >= 0) & (channels.reason_of >= 0)).nonzero().flatten()
    for g, r in _pairs(group_of_class[pinned_classes], channels.reason_of[pinned_classes], len(channels.reasons)):
        reasons_of[g].append(channels.reasons[r])

    sort = torch.argsort(group_of_class, stable=True)
    counts = torch.bincount(group_of_class[group_of_class >= 0], minlength=len(order)).tolist()
    start = int((group_of_class < 0).sum())
    groups = []
    for index, names in enumerate(producers_of):
        classes = sort[start : start + counts[index]]
        start += counts[index]
        groups.append(Group(index, names[0], classes, names, members_of[index], channels.pinned[classes], reasons_of[index]))
    _add_parts(channels, groups, group_of_class)
    return groups


def _add_parts(channels: ChannelGraph, groups: list[Group], group_of_class: torch.Tensor) -> None:
    """Each group's parts: its classes split by the set of slots that index
    them. A class's set of slots is summed into one number (a random 63-bit
    weight per slot, over the distinct slots; equal sets give equal sums),
    so groups whose classes all agree are found without a loop over them."""
    slots = channels.slots
    raw, slot_of = end_to_end([slot.ids for slot in slots])
    if not raw.numel():
        return
    pairs = torch.unique(channels.class_of[raw] * len(slots) + slot_of)
    weight = torch.randint(-(2**62), 2**62, (len(slots),), generator=torch.Generator().manual_seed(0))
    n = channels.num_classes
    signature = torch.zeros(n, dtype=torch.int64).index_add_(0, pairs // len(slots), weight[pairs % len(slots)])
    known = group_of_class >= 0
    low, high = (torch.zeros(len(groups), dtype=torch.int64).scatter_reduce_(
        0, group_of_class[known], signature[known], reduce=reduce, include_self=False) for reduce in ("amin", "amax"))
    for g in (low != high).nonzero().flatten().tolist():
        _, part_of = torch.unique(signature[groups[g].classes], return_inverse=True)
        groups[g].parts = [(part_of == p).nonzero().flatten() for p in range(int(part_of.max()) + 1)]


class GroupPass:
    name = "groups"
    requires = ("channels",)
    provides = ("groups",)

    def __call__(self, state: CompileState) -> None:
        state.groups = form_groups(state.channels)
