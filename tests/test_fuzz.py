"""Random architectures: prune gives an exact compact model or a documented
refusal, nothing else (no mismatch, no exception from inside torch, no change
to the input model).

The generator and the check live in tests/fuzz_models.py; benchmarks/fuzz.py
runs thousands of cases from seeds. Here hypothesis draws a few hundred with a
fixed seed, so a failure is reproducible and shrinks to a small program.
"""

import collections

import pytest
import torch
import torch.fx
from fuzz_models import (
    OP_WEIGHTS,
    Case,
    HypothesisChooser,
    Meta,
    Program,
    Settings,
    draw_settings,
    generate,
    random_case,
    run_case,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphprune

EXAMPLES = 500


@st.composite
def cases(draw):
    choose = HypothesisChooser(draw)
    program = generate(choose, max_ops=10)
    return Case(program, draw_settings(choose, program.build()), input_seed=draw(st.integers(0, 10_000)))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions run several times faster on one thread than on two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@settings(
    derandomize=True,
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(case=cases())
def test_prune_is_exact_or_a_documented_refusal(case):
    outcome = run_case(case)
    assert outcome.kind in ("exact", "refused"), f"{outcome.detail}\n{case!r}\n{outcome.trace}"


def test_the_generator_covers_every_construct_and_prunes_often():
    """The fuzz above means something only if its models use every op kind
    and are often actually pruned (not all pinned)."""
    kinds, custom_leaves, outcomes = collections.Counter(), 0, collections.Counter()
    for seed in range(120):
        case = random_case(seed)
        kinds.update(op["op"] for op in case.program.ops)
        if any(op["op"] == "custom" for op in case.program.ops):
            graph = torch.fx.symbolic_trace(case.program.build()).graph
            custom_leaves += any(getattr(n.target, "__name__", "").startswith("fuzz_") for n in graph.nodes)
        if seed < 60:
            outcome = run_case(case)
            outcomes[(outcome.kind, outcome.smaller)] += 1
    assert set(OP_WEIGHTS) <= set(kinds), f"never generated: {set(OP_WEIGHTS) - set(kinds)}"
    assert custom_leaves > 0  # the wrapped function stays one node, with no rule
    assert outcomes[("exact", True)] >= 15, outcomes  # about a third prune; the rest are all pinned
    assert sum(len(random_case(s).program.inputs) == 2 for s in range(200)) > 10
    assert sum(len(random_case(s).program.outputs) > 1 for s in range(200)) > 20


CONV_RELU_CONV = Program(
    inputs=[(3, 6, 6)],
    ops=[
        dict(op="conv", src=[0], cout=8, k=3, stride=1, padding=1, dilation=1, groups=1, bias=True,
             pmode="zeros", out=[Meta(8, 6, 6)]),
        dict(op="act", src=[1], name="relu", form=0, out=[Meta(8, 6, 6)]),
        dict(op="conv", src=[2], cout=4, k=1, stride=1, padding=0, dilation=1, groups=1, bias=True,
             pmode="zeros", out=[Meta(4, 6, 6)]),
    ],
    outputs=[3],
)


def test_a_hand_written_program_prunes_exactly():
    outcome = run_case(Case(CONV_RELU_CONV, Settings(ratio=0.5)))
    assert outcome.kind == "exact" and outcome.smaller


class CorruptCompact:
    """Scales one weight of the compact model: the kind of bug the fuzz must catch."""

    name = "apply"
    requires = ("plan", "compact_graph")
    provides = ("compact",)

    def __init__(self, real):
        self.real = real

    def __call__(self, state):
        self.real(state)
        with torch.no_grad():
            next(p for p in state.compact.parameters() if p.ndim == 4).mul_(1.01)


@pytest.mark.parametrize("verify", [False, True])
def test_the_check_catches_a_wrong_compact_model(monkeypatch, verify):
    real = graphprune.Pipeline.default

    def corrupted(cls):
        pipeline = real()
        apply = next(p for p in pipeline.passes if p.name == "apply")
        return pipeline.replace("apply", CorruptCompact(apply))

    monkeypatch.setattr(graphprune.Pipeline, "default", classmethod(corrupted))
    outcome = run_case(Case(CONV_RELU_CONV, Settings(ratio=0.5, verify=verify)))
    assert outcome.kind == "failure"
    assert ("VerificationError" if verify else "compact != masked") in outcome.detail


def test_the_check_catches_a_changed_input_model(monkeypatch):
    case = Case(CONV_RELU_CONV, Settings(ratio=0.5))
    real_prune = graphprune.prune

    def prune_and_touch(model, *args, **kwargs):
        result = real_prune(model, *args, **kwargs)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        return result

    monkeypatch.setattr(graphprune, "prune", prune_and_touch)
    assert run_case(case).detail == "prune changed the input model's state_dict"
