"""Groups of coupled channels and the pruning plan a user reads before trusting it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .analysis import ChannelGraph
from .ids import end_to_end


@dataclass
class Group:
    """Coupled channels written by the same set of layers.

    ``classes`` are the coupled channels (indices into the channel graph's
    classes); ``producers`` the layers that write them; ``members`` every
    parameter or buffer sliced with them. ``parts``: where layers read the
    group in pieces (a chunk or split of it, each piece to other layers),
    the positions in ``classes`` of each piece; empty where every channel is
    read by the same layers.
    """

    index: int
    name: str
    classes: torch.Tensor
    producers: list[str]
    members: list[str]
    pinned: torch.Tensor
    reasons: list[str]
    parts: list[torch.Tensor] = field(default_factory=list)

    @property
    def size(self) -> int:
        return self.classes.numel()

    @property
    def prunable(self) -> int:
        return int((~self.pinned).sum())


@dataclass
class GroupDecision:
    group: Group
    kept: torch.Tensor  # bool per class of the group

    @property
    def kept_count(self) -> int:
        return int(self.kept.sum())


@dataclass
class PruningPlan:
    """Which coupled channels the compact model keeps.

    ``class_kept[c]``: class ``c`` survives in the compact model.
    ``raw_dropped[i]``: raw id ``i`` is zeroed in the masked model (per layer,
    this follows each layer's own choice, as in the paper).
    """

    channels: ChannelGraph
    groups: list[Group]
    class_kept: torch.Tensor
    raw_dropped: torch.Tensor
    mode: str
    coupling: str
    notes: list[str] = field(default_factory=list)
    # cut_slots' answer, the class_kept tensor it was computed for and that tensor's version then
    _cut: tuple[torch.Tensor, int, dict] | None = field(default=None, init=False, repr=False, compare=False)

    def kept(self, raw: torch.Tensor) -> torch.Tensor:
        return self.class_kept[self.channels.class_of[raw]]

    def cut_slots(self) -> dict[tuple[str, int], torch.Tensor]:
        """(tensor name, dim) -> the indices kept along it, for every slot that loses
        some (computed once per plan: the rewrite and apply passes both slice)."""
        kept = self.class_kept
        if self._cut is None or self._cut[0] is not kept or self._cut[1] != kept._version:
            self._cut = (kept, kept._version, self._cut_slots())
        return dict(self._cut[2])

    def _cut_slots(self) -> dict[tuple[str, int], torch.Tensor]:
        slots = self.channels.slots
        if not slots:
            return {}
        # all slots at once: a few tensor ops in all instead of a few per slot (hundreds of slots)
        raw, slot_of = end_to_end([slot.ids for slot in slots])
        sizes = torch.tensor([slot.ids.numel() for slot in slots])
        keep = self.class_kept[self.channels.class_of[raw]]
        kept_per_slot = torch.zeros(len(slots), dtype=torch.int64).index_add_(0, slot_of, keep.long())
        positions = keep.nonzero().flatten()
        starts = torch.cumsum(sizes, 0) - sizes
        indices = (positions - starts[slot_of[positions]]).split(kept_per_slot.tolist())
        cut = (kept_per_slot < sizes).tolist()
        return {(slot.target, slot.dim): indices[i] for i, slot in enumerate(slots) if cut[i]}

    def kept_indices(self, target: str, dim: int = 0) -> torch.Tensor:
        """Indices along ``dim`` of parameter/buffer ``target`` that the compact model keeps."""
        for slot in self.channels.slots:
            if slot.target == target and slot.dim == dim:
                return self.kept(slot.ids).nonzero().flatten()
        raise KeyError(f"{target!r} dim {dim} is not indexed by channels")

    def decisions(self) -> list[GroupDecision]:
        return [GroupDecision(g, self.class_kept[g.classes]) for g in self.groups]

    def group_of(self, module: str) -> Group:
        """The group whose channels ``module`` writes."""
        for g in self.groups:
            if module in g.producers:
                return g
        raise KeyError(f"no group is written by {module!r}")

    @property
    def channels_before(self) -> int:
        return sum(g.size for g in self.groups)

    @property
    def channels_after(self) -> int:
        return sum(int(self.class_kept[g.classes].sum()) for g in self.groups)

    def table(self, limit: int | None = None) -> str:
        rows = [f"{'group':<40} {'kept':>11} {'pinned':>7}  producers / why pinned"]
        for d in self.decisions()[:limit]:
            g = d.group
            why = "; ".join(g.reasons[:2]) if g.reasons else ""
            producers = ", ".join(g.producers[:3]) + (f" (+{len(g.producers) - 3})" if len(g.producers) > 3 else "")
            rows.append(
                f"{g.name[:40]:<40} {d.kept_count:>5}/{g.size:<5} {g.size - g.prunable:>7}  {producers}"
                + (f"  [{why}]" if why else "")
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        head = (
            f"PruningPlan(mode={self.mode}, coupling={self.coupling}, groups={len(self.groups)}, "
            f"channels {self.channels_before} -> {self.channels_after})"
        )
        return head + "\n" + self.table()

    def __repr__(self) -> str:
        return (
            f"PruningPlan(mode={self.mode!r}, coupling={self.coupling!r}, groups={len(self.groups)}, "
            f"channels={self.channels_before}->{self.channels_after})"
        )


@dataclass
class BiasFold:
    """What the dropped input channels of one layer add to its output."""

    node: str  # the layer's node in the masked (and compact) graph
    weight: str  # its weight, whose filter slot says which outputs survive
    bias: str | None  # its bias tensor; None: the compact layer gets one
    out_dim: int  # the activation dim the bias runs along
    delta: torch.Tensor  # per output channel of the full-width layer
    exact: bool
    why: str | None = None  # why not exact
    channels: list[int] = field(default_factory=list)  # input positions that are not exact
