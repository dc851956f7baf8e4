"""Data of the channel analysis: slots, producers, and the coupled-channel graph.

The analysis pass (``passes/channels.py``) walks the fx graph once and asks the
op rule of each node (``graphprune/rules``) to propagate channel-identity codes
(see ``ids.py``). Rules report what they learn through an
:class:`AnalysisContext`:

- ``fresh(n)``: new raw channel ids for a channel-creating op;
- ``unify(a, b)``: raw ids that must be kept or dropped together;
- ``pin(ids, reason)``: raw ids that must never be dropped;
- ``gate(ids)``: raw ids of a factor that cannot zero its product (an SE
  gate, ``x * sigmoid(fc(...))``): its layer's own choice does not decide
  whether the product's channel is dropped (see ``ChannelGraph.gated``);
- ``add_slot(target, dim, ids, writes)``: a parameter or buffer dimension whose
  indices are those channels (sliced by the rewrite; zeroed by the mask when
  ``writes``);
- ``add_producer(...)``: an op that creates channels and has filters to score.

At the end, :meth:`AnalysisContext.finish` resolves the unions into
*coupled channels* (classes) and returns a :class:`ChannelGraph`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch.utils._pytree import tree_leaves

from . import ids as idmod
from .tensors import get_tensor


@dataclass
class Slot:
    """One dimension of one parameter or buffer, indexed by channels.

    ``ids[i]`` is the raw channel id of index ``i`` along ``dim`` of the tensor
    named ``target`` (a qualified name in the traced module). ``writes`` marks a
    slot that writes its channel (a filter, a bias, BatchNorm's gamma and beta):
    the masked model zeroes it for dropped channels. ``kind`` says what the
    slot is (``filter``, ``bias``, ``norm_scale``, ``norm_shift``, ``stat``,
    ``input``, ``param``), for criteria and reports.
    """

    target: str
    dim: int
    ids: torch.Tensor
    writes: bool
    kind: str = "param"


@dataclass
class Producer:
    """A channel-creating op whose filters a criterion scores.

    ``filter_dim`` is the weight dimension that indexes output channels (0 for
    convs and linears, 1 for transposed convs). ``norm`` is the qualified name
    of the BatchNorm weight that directly scales this producer's channels, if
    any (for the BN-gamma criterion).
    """

    name: str
    weight: str
    filter_dim: int
    ids: torch.Tensor
    norm: str | None = None


@dataclass
class GraphCodes:
    """What the analysis recorded for one traced graph, per node name."""

    #: the code(s) of each node's output
    codes: dict[str, object] = field(default_factory=dict)
    #: which rule analysed each node, for reports
    rule_names: dict[str, str] = field(default_factory=dict)
    #: convs analysed as depthwise (output channel c is input channel c): their groups follow the kept count
    depthwise: set[str] = field(default_factory=set)
    #: nodes no rule understood: pinned, so the rewrite leaves them alone
    unknown: set[str] = field(default_factory=set)


@dataclass
class ChannelGraph:
    """The result of channel analysis.

    ``class_of[raw_id]`` is the coupled channel (class) of a raw id; class 0 is
    the pinned class. ``pinned[c]`` says class ``c`` must be kept, and
    ``reasons[reason_of[c]]`` says why (``reason_of[c]`` is -1 if not pinned).
    ``graphs`` holds the per-node records of each graph analysed: ``"eval"``
    (the traced graph) and, where the model computes something else in
    training mode, ``"train"``; one set of ids spans both, so a parameter
    means the same channels in either mode.
    """

    num_ids: int
    class_of: torch.Tensor
    num_classes: int
    pinned: torch.Tensor
    reasons: list[str]
    reason_of: torch.Tensor
    slots: list[Slot]
    producers: list[Producer]
    graphs: dict[str, GraphCodes]
    #: outputs outside the output contract (description -> code): their channels are not pinned
    auxiliary: dict[str, torch.Tensor] = field(default_factory=dict)
    #: where channels were split into whole heads: module path -> one raw id per head
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    #: per raw id: it reaches a product only as a factor that is never zero (an SE gate after its sigmoid),
    #: so the product is zero exactly where another factor is, whatever the gate's own layer keeps
    gated: torch.Tensor | None = None

    @property
    def codes(self) -> dict[str, object]:
        """The eval graph's codes per node name."""
        return self.graphs["eval"].codes

    @property
    def depthwise(self) -> set[str]:
        return self.graphs["eval"].depthwise

    @property
    def unknown(self) -> set[str]:
        return self.graphs["eval"].unknown

    @property
    def rule_names(self) -> dict[str, str]:
        return self.graphs["eval"].rule_names

    @functools.cached_property
    def tensor_classes(self) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Every parameter's and every graph tensor's raw ids, their classes end
        to end and which tensor each belongs to: the same for every choice of
        kept channels (the analysis is done when this is first read), so found
        once (a budget search finishes dozens of candidates)."""
        raws = [slot.ids for slot in self.slots]
        for code in self.codes.values():
            raws += [idmod.raw_ids(c).reshape(-1) for c in tree_leaves(code) if isinstance(c, torch.Tensor)]
        raws = [raw for raw in raws if raw.numel()]
        if not raws:
            return raws, torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64)
        flat, owner = idmod.end_to_end(raws)
        return raws, self.class_of[flat], owner

    def pin(self, raw: torch.Tensor, reason: str) -> None:
        """Pin the classes of raw ids ``raw`` after the analysis (a later pass's finding)."""
        classes = torch.unique(self.class_of[raw.reshape(-1)])
        classes = classes[~self.pinned[classes]]
        if classes.numel():
            self.reason_of[classes] = len(self.reasons)
            self.reasons.append(reason)
            self.pinned[classes] = True

    def pin_reasons(self, classes: torch.Tensor) -> list[str]:
        """The distinct reasons the given classes are pinned, first cause first."""
        index = torch.unique(self.reason_of[classes])
        return [self.reasons[i] for i in index.tolist() if i >= 0]

    @property
    def prunable_fraction(self) -> float:
        """Fraction of produced channels that are not pinned."""
        total = sum(p.ids.numel() for p in self.producers)
        if total == 0:
            return 0.0
        free = sum(int((~self.pinned[self.class_of[p.ids]]).sum()) for p in self.producers)
        return free / total


class AnalysisContext:
    """Mutable state shared by the op rules during one analysis walk."""

    def __init__(self, gm: fx.GraphModule, whole_heads: bool = False):
        self.next_id = 1  # 0 is PINNED
        #: a reshape into heads makes each head one channel (``PruneConfig.heads == "whole"``)
        self.whole_heads = whole_heads
        #: where a reshape split channels into heads: its module path (or node name) -> one raw id per head
        self.heads: dict[str, torch.Tensor] = {}
        self._edges_a: list[torch.Tensor] = []
        self._edges_b: list[torch.Tensor] = []
        self._pins: list[tuple[torch.Tensor, str]] = []
        self._gates: list[torch.Tensor] = []
        self.slots: dict[tuple[str, int], Slot] = {}
        self.producers: dict[str, Producer] = {}
        self.graphs: dict[str, GraphCodes] = {}
        self.auxiliary: dict[str, torch.Tensor] = {}
        self.walk("eval", gm)

    def walk(self, name: str, gm: fx.GraphModule) -> None:
        """From now on, rules analyse graph ``name`` (ids, slots and unions carry over)."""
        self.gm, self.mode = gm, name
        # get_submodule walks the path through nn.Module.__getattr__ on every
        # call; rules ask for a node's module many times.
        self.modules: dict[str, torch.nn.Module] = dict(gm.named_modules(remove_duplicate=False))
        record = self.graphs.setdefault(name, GraphCodes())
        self.codes, self.rule_names = record.codes, record.rule_names
        self.depthwise, self.unknown = record.depthwise, record.unknown

    def module(self, target: str) -> torch.nn.Module:
        """The submodule at ``target`` (as ``gm.get_submodule``, from a table)."""
        found = self.modules.get(target)
        return found if found is not None else self.gm.get_submodule(target)

    def tensor(self, target: str) -> torch.Tensor:
        """The parameter or buffer (or tensor attribute) named ``target``."""
        return get_tensor(self.gm, target, self.modules)

    def code(self, arg: object) -> object:
        """The code(s) recorded for an input of a node (None for non-tensors)."""
        return self.codes.get(arg.name) if isinstance(arg, fx.Node) else None

    # -- ids --------------------------------------------------------------
    def fresh(self, count: int) -> torch.Tensor:
        out = torch.arange(self.next_id, self.next_id + count, dtype=torch.int64)
        self.next_id += count
        return out

    def unify(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Couple raw ids ``a[i]`` and ``b[i]`` (broadcast together)."""
        a, b = torch.broadcast_tensors(a, b)
        a, b = a.reshape(-1), b.reshape(-1)
        differ = a != b
        if bool(differ.any()):
            self._edges_a.append(a[differ])
            self._edges_b.append(b[differ])

    def unify_across(self, code: torch.Tensor, keep_dim: int) -> None:
        """Couple elements that share an index along ``keep_dim``.

        Afterwards the channels of ``code`` are indexed by ``keep_dim`` alone,
        so any kept set is a product set the compact op can reproduce.
        """
        raw = idmod.raw_ids(code).movedim(keep_dim, 0)
        raw = raw.reshape(raw.shape[0], -1)
        if raw.shape[1] > 1:
            self.unify(raw[:, :1].expand(-1, raw.shape[1] - 1), raw[:, 1:])

    def pin(self, raw: torch.Tensor, reason: str) -> None:
        raw = raw.reshape(-1)
        if raw.numel():
            self._pins.append((raw, reason))

    def pin_code(self, code: torch.Tensor, reason: str) -> None:
        self.pin(idmod.raw_ids(code), reason)

    def gate(self, raw: torch.Tensor) -> None:
        """Raw ids of a factor that is never zero, multiplied into a product that is zero
        when another factor is dropped: the gate's layer does not decide that channel."""
        raw = raw.reshape(-1)
        if raw.numel():
            self._gates.append(raw)

    # -- members ----------------------------------------------------------
    def add_slot(
        self, target: str, dim: int, raw: torch.Tensor, writes: bool, kind: str = "param"
    ) -> None:
        key = (target, dim)
        raw = raw.reshape(-1)
        known = self.slots.get(key)
        if known is None:
            self.slots[key] = Slot(target, dim, raw, writes, kind)
            return
        # A parameter used twice (a reused module, tied weights): its indices
        # must mean the same channels at every use.
        if known.ids.numel() != raw.numel():
            self.pin(known.ids, f"{target} is used with different channel counts")
            self.pin(raw, f"{target} is used with different channel counts")
            return
        self.unify(known.ids, raw)
        known.writes = known.writes or writes

    def add_producer(self, name: str, weight: str, filter_dim: int, raw: torch.Tensor) -> None:
        if weight not in self.producers:
            self.producers[weight] = Producer(name, weight, filter_dim, raw.reshape(-1))

    # -- resolution -------------------------------------------------------
    def finish(self) -> ChannelGraph:
        n = self.next_id
        if self._edges_a:
            ea, eb = torch.cat(self._edges_a), torch.cat(self._edges_b)
        else:
            ea = eb = torch.empty(0, dtype=torch.int64)
        root = idmod.connected_components(n, ea, eb)
        roots, class_of = torch.unique(root, return_inverse=True)
        num_classes = roots.numel()  # root 0 (pinned) becomes class 0

        # The first pin event that reaches a class is its reason (events are in graph order).
        reasons = ["reserved"]
        reason_of = torch.full((num_classes,), -1, dtype=torch.int64)
        reason_of[0] = 0
        for raw, reason in self._pins:
            cls = class_of[raw]
            cls = cls[reason_of[cls] < 0]
            if cls.numel():
                reason_of[cls] = len(reasons)
                reasons.append(reason)
        # A class no producer writes has no filter to drop: keep it.
        produced = torch.zeros(num_classes, dtype=torch.bool)
        for p in self.producers.values():
            produced[class_of[p.ids]] = True
        orphan = ~produced & (reason_of < 0)
        if bool(orphan.any()):
            reason_of[orphan] = len(reasons)
            reasons.append("not written by any prunable layer")
        pinned = reason_of >= 0

        producers = list(self.producers.values())
        _attach_norms(producers, list(self.slots.values()), n)
        gated = torch.zeros(n, dtype=torch.bool)
        if self._gates:
            gated[torch.cat(self._gates)] = True
        return ChannelGraph(
            num_ids=n,
            class_of=class_of,
            num_classes=num_classes,
            pinned=pinned,
            reasons=reasons,
            reason_of=reason_of,
            slots=list(self.slots.values()),
            producers=producers,
            graphs=self.graphs,
            auxiliary=self.auxiliary,
            heads=self.heads,
            gated=gated,
        )


def _attach_norms(producers: list[Producer], slots: list[Slot], num_ids: int) -> None:
    """Tie each BatchNorm weight to the single producer whose raw ids it scales."""
    origin = torch.full((num_ids,), -1, dtype=torch.int64)
    for index, p in enumerate(producers):
        origin[p.ids] = index
    for slot in slots:
        if slot.kind != "norm_scale":
            continue
        owners = torch.unique(origin[slot.ids])
        if owners.numel() == 1 and int(owners) >= 0:
            p = producers[int(owners)]
            if p.norm is None and slot.ids.numel() == p.ids.numel():
                p.norm = slot.target
