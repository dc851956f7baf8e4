"""Group pass: coupled channels written by the same layers form a group.

Two classes are in one group when some producer writes both (a residual
stream: every conv adding into it; a grouped conv's output). A consumer that
reads several groups (a conv after a concatenation) does not merge them: each
part of the concatenation keeps its own group and its own ratio.
"""

from __future__ import annotations

import torch

from ..analysis import ChannelGraph
from ..ids import connected_components
from ..pipeline import CompileState
from ..plan import Group


def _owner(target: str) -> str:
    return target.rsplit(".", 1)[0] if "." in target else target


def form_groups(channels: ChannelGraph) -> list[Group]:
    n = channels.num_classes
    per_producer = [torch.unique(channels.class_of[p.ids]) for p in channels.producers]
    edges_a = [c[:1].expand(c.numel() - 1) for c in per_producer if c.numel() > 1]
    edges_b = [c[1:] for c in per_producer if c.numel() > 1]
    ea = torch.cat(edges_a) if edges_a else torch.empty(0, dtype=torch.int64)
    eb = torch.cat(edges_b) if edges_b else torch.empty(0, dtype=torch.int64)
    label = connected_components(n, ea, eb)

    order: dict[int, int] = {}  # component label -> group index, in producer order
    producers_of: list[list[str]] = []
    for p, classes in zip(channels.producers, per_producer):
        root = int(label[classes[0]])
        if root not in order:
            order[root] = len(order)
            producers_of.append([])
        producers_of[order[root]].append(_owner(p.weight))
    members_of: list[list[str]] = [[] for _ in order]
    index_of_label = torch.full((n,), -1, dtype=torch.int64)
    for root, index in order.items():
        index_of_label[root] = index
    group_of_class = index_of_label[label]
    for slot in channels.slots:
        touched = torch.unique(group_of_class[channels.class_of[slot.ids]])
        for g in touched[touched >= 0].tolist():
            members_of[g].append(slot.target if slot.dim == 0 else f"{slot.target}[dim {slot.dim}]")

    sort = torch.argsort(group_of_class, stable=True)
    counts = torch.bincount(group_of_class[group_of_class >= 0], minlength=len(order))
    start = int((group_of_class < 0).sum())
    groups = []
    for index, names in enumerate(producers_of):
        classes = sort[start : start + int(counts[index])]
        start += int(counts[index])
        pinned = channels.pinned[classes]
        reasons = channels.pin_reasons(classes[pinned])
        groups.append(Group(index, names[0], classes, names, members_of[index], pinned, reasons))
    return groups


class GroupPass:
    name = "groups"
    requires = ("channels",)
    provides = ("groups",)

    def __call__(self, state: CompileState) -> None:
        state.groups = form_groups(state.channels)
