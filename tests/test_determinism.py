"""The same model, inputs and settings give the same plan (kept indices and
masks) on every run and in every process."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision

import graphprune

# model, criterion, mode: one of each kind of coupling (residual adds,
# concatenations, channel shuffle with splits) and of each criterion family.
CASES = [
    ("resnet18", "l1", "per_layer"),
    ("densenet121", "fpgm", "group"),
    ("shufflenet_v2_x0_5", "random", "global"),
]


def plan_of(name: str, criterion: str, mode: str) -> dict:
    """Kept indices of every sliced parameter dim and the masked slots, as JSON-able data."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    result = graphprune.prune(model, x, ratio=0.5, criterion=criterion, mode=mode, verify=False, seed=7)
    plan = result.plan
    kept = {f"{s.target}:{s.dim}": plan.kept(s.ids).nonzero().flatten().tolist() for s in plan.channels.slots}
    masked = {f"{s.target}:{s.dim}": plan.raw_dropped[s.ids].nonzero().flatten().tolist()
              for s in plan.channels.slots if s.writes}
    return {"kept": kept, "masked": masked, "groups": [g.name for g in plan.groups]}


def main() -> None:
    torch.set_num_threads(1)
    print(json.dumps({name: plan_of(name, c, m) for name, c, m in CASES}, sort_keys=True))


@pytest.fixture(scope="module")
def in_process():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {name: plan_of(name, c, m) for name, c, m in CASES}
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name,criterion,mode", CASES)
def test_the_same_plan_on_every_run(in_process, name, criterion, mode):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = plan_of(name, criterion, mode)
    finally:
        torch.set_num_threads(threads)
    assert again == in_process[name]
    assert any(len(v) for v in again["masked"].values())  # something was pruned: the check means something


@pytest.mark.slow  # a fresh interpreter importing torch: ~10 s, in the slow tier (CI runs it)
def test_the_same_plan_in_another_process(in_process):
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # another hash seed: set and dict orders must not matter
    code = f"import sys; sys.path.insert(0, {here!r}); import test_determinism; test_determinism.main()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    other = json.loads(out.stdout.strip().splitlines()[-1])
    assert other.keys() == in_process.keys()
    for name in in_process:
        assert other[name] == json.loads(json.dumps(in_process[name])), name
