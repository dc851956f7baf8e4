"""The public API: the input model is never touched, errors are clear."""

import pytest
import torch
import torch.nn as nn
import torchvision

import graphprune
from graphprune.errors import ConfigError, TraceError


def test_input_model_state_dict_and_mode_are_unchanged():
    model = torchvision.models.resnet18(num_classes=10)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = graphprune.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training
    assert model.layer1[0].conv1.out_channels == 64
    assert result.compact.get_submodule("layer1.0.conv1").out_channels == 32
    assert any("training mode" in n for n in result.report.notes)


def test_report_has_params_flops_error_and_time_per_pass():
    model = torchvision.models.resnet18(num_classes=10)
    report = graphprune.prune(model, torch.randn(1, 3, 32, 32)).report
    assert report.params_before == sum(p.numel() for p in model.parameters())
    assert report.params_after < report.params_before
    assert 0 < report.flops_after < report.flops_before
    assert report.max_abs_error is not None and report.exact
    assert set(report.timings) >= {"trace", "channels", "select", "rewrite", "verify"}
    text = str(report)
    assert "params:" in text and "FLOPs:" in text and "compact vs masked: equal" in text


def test_plan_prints_groups_with_kept_counts_and_pin_reasons():
    plan = graphprune.prune(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32)).plan
    text = str(plan)
    assert "layer1.0.conv1" in text
    assert "reaches the model output" in text  # the classifier's outputs


@pytest.mark.parametrize("ratio", [1.5, -0.1, 1.0, float("nan"), "half"])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ConfigError, match="ratio"):
        graphprune.prune(nn.Conv2d(3, 3, 1), torch.randn(1, 3, 4, 4), ratio=ratio)


def test_unknown_criterion_mode_and_coupling_are_refused():
    x, m = torch.randn(1, 3, 4, 4), nn.Conv2d(3, 3, 1)
    with pytest.raises(ConfigError, match="unknown criterion 'l3'"):
        graphprune.prune(m, x, criterion="l3")
    with pytest.raises(ConfigError, match="mode must be one of"):
        graphprune.prune(m, x, mode="layerwise")
    with pytest.raises(ConfigError, match="coupling"):
        graphprune.prune(m, x, coupling="and")
    with pytest.raises(ConfigError, match="min_channels"):
        graphprune.prune(m, x, min_channels=0)


def test_ignore_naming_a_missing_module_suggests_the_right_one():
    with pytest.raises(ConfigError, match="did you mean .*layer1.0.conv1"):
        graphprune.prune(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32), ignore=["layer1.0.conv"])


def test_ignored_module_keeps_its_exact_shape():
    model = torchvision.models.resnet18(num_classes=10)
    result = graphprune.prune(model, torch.randn(1, 3, 32, 32), ignore=["layer2.0.conv1", model.layer3[1].conv1])
    c = result.compact
    assert c.get_submodule("layer2.0.conv1").out_channels == 128 and c.get_submodule("layer3.1.conv1").out_channels == 256
    assert c.get_submodule("layer2.1.conv1").out_channels == 64


def test_round_to_makes_kept_counts_multiples():
    result = graphprune.prune(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32),
                              ratio=0.55, round_to=8, mode="group")
    for d in result.plan.decisions():
        if d.group.prunable == d.group.size:
            assert d.kept_count % 8 == 0 or d.kept_count == d.group.size
    assert result.report.exact


def test_per_module_ratio_override():
    result = graphprune.prune(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32),
                              ratio=0.5, ratios={"layer4.*": 0.75})
    assert result.compact.get_submodule("layer4.0.conv1").out_channels == 128
    assert result.compact.get_submodule("layer3.0.conv1").out_channels == 128


def test_wrong_input_shape_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match=r"example inputs \(\(1, 4, 32, 32\) float32\) do not fit"):
        graphprune.prune(torchvision.models.resnet18(), torch.randn(1, 4, 32, 32))


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


def test_untraceable_model_names_the_failing_line():
    with pytest.raises(TraceError, match=r"Untraceable at test_api.py:\d+ in forward: `if x.sum\(\) > 0:`"):
        graphprune.prune(Untraceable(), torch.randn(1, 3, 4, 4))


def test_global_mode_drops_the_ratio_of_prunable_channels_across_groups():
    model = torchvision.models.resnet18(num_classes=10)
    result = graphprune.prune(model, torch.randn(1, 3, 32, 32), ratio=0.4, mode="global")
    plan = result.plan
    prunable = sum(g.prunable for g in plan.groups)
    dropped = plan.channels_before - plan.channels_after
    assert dropped == int(0.4 * prunable)
    kept_fractions = {round(d.kept_count / d.group.size, 2) for d in plan.decisions() if d.group.prunable}
    assert len(kept_fractions) > 1  # not a uniform ratio: one ranking across groups
    assert all(d.kept_count >= 1 for d in plan.decisions())
    assert result.report.exact


class BreakCompact:
    """A user pass that corrupts one weight of the compact model."""

    name = "break_compact"
    requires = ("compact",)
    provides = ()

    def __call__(self, state):
        with torch.no_grad():
            state.compact.get_submodule("layer2.0.conv2").weight.mul_(1.5)


def test_a_mismatch_names_the_first_diverging_node():
    pipeline = graphprune.Pipeline.default().insert_after("apply", BreakCompact())
    with pytest.raises(graphprune.VerificationError, match="first diverging node: layer2_0_conv2"):
        graphprune.prune(torchvision.models.resnet18(num_classes=10), torch.randn(1, 3, 32, 32), pipeline=pipeline)


def test_the_same_inputs_give_the_same_plan():
    def kept(criterion):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=10)
        plan = graphprune.prune(model, torch.randn(1, 3, 32, 32), criterion=criterion, mode="group").plan
        return plan.class_kept.tolist()

    assert kept("l1") == kept("l1")
    assert kept("fpgm") == kept("fpgm")


def test_the_masked_model_is_built_on_first_use_and_only_from_the_model_as_it_was():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    unverified = graphprune.prune(model, x, ratio=0.5, verify=False)
    assert unverified.state.masked is None  # verify=False: nothing has needed it yet
    masked = unverified.masked
    assert unverified.masked is masked  # built once
    verified = graphprune.prune(model, x, ratio=0.5)
    expected = verified.masked.state_dict()
    assert masked.state_dict().keys() == expected.keys()
    assert all(torch.equal(masked.state_dict()[k], expected[k]) for k in expected)
    with torch.no_grad():
        assert torch.allclose(masked(x), unverified.compact(x), atol=1e-5)

    # The user changes the model before asking for the masked one: refused, not built from the new weights.
    later = graphprune.prune(model, x, ratio=0.5, verify=False)
    with torch.no_grad():
        model.conv1.weight.mul_(2.0)
    with pytest.raises(graphprune.GraphpruneError, match="changed since"):
        _ = later.masked
    again = graphprune.prune(model, x, ratio=0.5, verify=False)
    model.fc = nn.Linear(512, 10)
    with pytest.raises(graphprune.GraphpruneError, match="Read result.masked before changing the model"):
        _ = again.masked


def test_compact_model_graph_and_user_model_share_no_storage():
    # the apply pass copies the compact graph's slices: a copy, or folding into one bias would fold into both
    model = torchvision.models.resnet18(num_classes=10)
    result = graphprune.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5, mode="per_layer")

    def storages(m):
        return {t.untyped_storage().data_ptr() for t in (*m.parameters(), *m.buffers()) if t.numel()}

    compact, graph, user = storages(result.compact), storages(result.compact_graph), storages(model)
    assert compact and not compact & graph and not compact & user and not graph & user


def test_the_graphs_a_user_gets_copy_pickle_and_script_like_any_graph_module():
    # their code is generated on first use (torch's lazy GraphModule): copies, pickles and
    # TorchScript must see ordinary GraphModules, each with a forward of its own
    import copy
    import pickle

    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    result = graphprune.prune(model, x[:1], ratio=0.5)
    expected = result.compact(x)
    for graph in (result.compact_graph, result.state.graph):
        assert type(graph).__name__ == "ResNet"
        copied = copy.deepcopy(graph)
        assert torch.allclose(copied(x), graph(x), atol=1e-6)
        assert torch.allclose(pickle.loads(pickle.dumps(graph))(x), graph(x), atol=1e-6)
        assert torch.allclose(torch.jit.script(graph)(x), graph(x), atol=1e-6)
        assert "def forward" in graph.code
    assert torch.allclose(result.compact_graph(x), expected, atol=1e-5)
    assert torch.allclose(result.state.graph(x), model(x), atol=1e-5)
