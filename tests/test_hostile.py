"""Hostile and mistaken input: each is refused with a one-line error that says
what to do, or handled exactly and said so in the report."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import graphprune
from graphprune.errors import ConfigError, GraphpruneError, ModelError, TraceError


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text.strip(), text
    return text


def outputs_equal(a, b, *inputs) -> bool:
    with torch.no_grad():
        x, y = a(*(t.clone() for t in inputs)), b(*(t.clone() for t in inputs))
    return (x - y).abs().max() <= 1e-5 * x.abs().max() + 1e-7


class Net(nn.Module):
    """A residual stream, a concatenation, a split and a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 6, 1)
        self.c = nn.Conv2d(14, 10, 1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        y = F.relu(self.bn(self.stem(x)))
        y = y + F.relu(self.a(y))
        z = self.c(torch.cat([y, F.relu(self.b(y))], 1))
        left, _ = z.split([5, 5], 1)
        return self.fc(self.drop(F.relu(left).mean((2, 3))))


X = torch.randn(2, 3, 8, 8)


# -- options ---------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1, float("nan"), math.inf, "0.5", None, True])
def test_ratio_outside_zero_one_is_refused(ratio):
    with pytest.raises(ConfigError, match=r"ratio must be (in \[0, 1\)|a number in \[0, 1\))") as e:
        graphprune.prune(Net(), X, ratio=ratio)
    one_line(e)


def test_per_module_ratio_outside_zero_one_is_refused():
    with pytest.raises(ConfigError, match=r"ratios\['a'\] must be in \[0, 1\)") as e:
        graphprune.prune(Net(), X, ratios={"a": 1.0})
    one_line(e)


@pytest.mark.parametrize("mode", ["per_layer", "group", "global"])
@pytest.mark.parametrize("min_channels", [1, 3])
def test_a_ratio_that_would_remove_every_channel_keeps_min_channels(mode, min_channels):
    model = Net()
    result = graphprune.prune(model, X, ratio=0.999, mode=mode, min_channels=min_channels, ratios={"c": 0.9999})
    compact = result.compact
    for name in ("stem", "a", "b", "c"):
        conv = compact.get_submodule(name)
        assert conv.out_channels >= min(min_channels, model.get_submodule(name).out_channels), name
        assert conv.in_channels >= 1
    assert compact.fc.in_features >= 1
    for d in result.plan.decisions():
        assert d.kept_count >= min(min_channels, d.group.size)
    assert result.report.exact and result.report.params_after < result.report.params_before
    assert outputs_equal(result.masked, compact, torch.randn(3, 3, 8, 8))


def test_ignore_naming_a_missing_module_suggests_a_real_one():
    with pytest.raises(ConfigError, match=r"ignore names 'stme', but the model has no such module; did you mean stem") as e:
        graphprune.prune(Net(), X, ignore=["stme"])
    one_line(e)


def test_ignore_a_module_of_another_model_is_refused():
    with pytest.raises(ConfigError, match="not part of the model") as e:
        graphprune.prune(Net(), X, ignore=[nn.Conv2d(3, 8, 3)])
    one_line(e)


def test_not_a_module_is_refused():
    with pytest.raises(ConfigError, match="model must be a torch.nn.Module; got function") as e:
        graphprune.prune(lambda x: x, X)
    one_line(e)


# -- example inputs ----------------------------------------------------------------


def test_example_input_of_the_wrong_shape():
    with pytest.raises(ConfigError, match=r"example inputs \(\(2, 4, 8, 8\) float32\) do not fit the model") as e:
        graphprune.prune(Net(), torch.randn(2, 4, 8, 8))
    one_line(e)


@pytest.mark.parametrize("dtype", [torch.int64, torch.float64, torch.float16])
def test_example_input_of_the_wrong_dtype_says_which_dtype_to_use(dtype):
    x = (X * 10).to(dtype)
    with pytest.raises(ConfigError, match=r"weights are float32: convert input 0 with x.to\(torch.float32\)") as e:
        graphprune.prune(Net(), x)
    assert str(dtype).replace("torch.", "") in one_line(e)


def test_too_many_or_too_few_example_inputs():
    with pytest.raises(ConfigError, match=r"the model takes 1 input \(x\); got 2 example inputs") as e:
        graphprune.prune(Net(), (X, X))
    one_line(e)
    with pytest.raises(ConfigError, match=r"example inputs \(\) do not fit the model"):
        graphprune.prune(Net(), ())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_example_input_holding_nan_or_inf_is_refused(bad):
    x = X.clone()
    x[0, 0, 0, 0] = bad
    with pytest.raises(ConfigError, match="example input 0 holds NaN or infinite values") as e:
        graphprune.prune(Net(), x)
    one_line(e)


# -- the model ---------------------------------------------------------------------


def test_model_in_training_mode_is_compiled_in_eval_and_the_user_is_told():
    model = Net().train()
    stats = model.bn.running_mean.clone(), model.bn.running_var.clone()
    result = graphprune.prune(model, X, ratio=0.5)
    assert any("training mode; it was compiled in eval mode" in n for n in result.report.notes)
    assert model.training and model.drop.training  # the caller's model is left as it was
    assert torch.equal(model.bn.running_mean, stats[0]) and torch.equal(model.bn.running_var, stats[1])
    assert not result.compact.training and result.report.exact
    # eval semantics (no dropout, running statistics): the masked model is the eval-mode original
    with torch.no_grad():
        assert outputs_equal(model.eval(), result.masked, X) or result.plan.raw_dropped.any()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_weight_is_refused_with_the_parameter_name(bad):
    model = Net()
    with torch.no_grad():
        model.a.weight[1, 2, 0, 0] = bad
    with pytest.raises(ModelError, match=r"parameter 'a.weight' has [01] NaN and [01] infinite values; fix the weights") as e:
        graphprune.prune(model, X)
    one_line(e)


def test_inf_in_a_buffer_is_refused_with_its_name():
    model = Net()
    model.bn.running_var[3] = float("inf")
    with pytest.raises(ModelError, match=r"buffer 'bn.running_var' has 0 NaN and 1 infinite values") as e:
        graphprune.prune(model, X)
    assert isinstance(e.value, GraphpruneError) and isinstance(e.value, ValueError)


class Tied(nn.Module):
    """``b`` reuses ``a``'s weight on a's own output; ``head`` shares nothing."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.b.weight = self.a.weight
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        y = F.relu(self.a(F.relu(self.stem(x))))
        return self.head(y + F.relu(self.b(y)))


@pytest.mark.parametrize("mode", ["per_layer", "group", "global"])
def test_tied_weights_stay_exact_and_tied(mode):
    model = Tied()
    result = graphprune.prune(model, X, ratio=0.5, mode=mode)
    compact = result.compact
    assert result.report.exact
    assert compact.a.weight is compact.b.weight  # still one tensor
    assert compact.a.out_channels < 8 and compact.b.in_channels == compact.a.out_channels
    # one tensor read with a's input and output channels: they are kept together
    assert result.plan.kept_indices("stem.weight").tolist() == result.plan.kept_indices("a.weight").tolist()
    assert result.report.params_after == sum(p.numel() for p in compact.parameters())
    assert outputs_equal(result.masked, compact, torch.randn(3, 3, 8, 8))
    assert model.b.weight is model.a.weight and model.a.out_channels == 8


def test_model_with_no_prunable_channels_is_returned_unchanged_and_says_so():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5))  # the only channels are outputs
    result = graphprune.prune(model, X, ratio=0.5)
    assert result.report.params_after == result.report.params_before
    assert outputs_equal(model, result.compact, X)
    assert any(n.startswith("nothing to prune: every channel is pinned (reaches the model output)")
               for n in result.report.notes)


def test_model_without_any_layer_to_prune_says_so():
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))
    result = graphprune.prune(model, X, ratio=0.5)
    assert outputs_equal(model, result.compact, X)
    assert any("nothing to prune: the model has no convolution or linear layer" in n for n in result.report.notes)


def test_ratio_zero_says_nothing_was_pruned():
    result = graphprune.prune(Net(), X, ratio=0.0)
    assert result.report.params_after == result.report.params_before
    assert "nothing pruned: ratio is 0 (the compact model is the input model, unchanged)" in result.report.notes


def test_a_pruned_model_has_no_nothing_pruned_note():
    result = graphprune.prune(Net(), X, ratio=0.5)
    assert result.report.params_after < result.report.params_before
    assert not any(n.startswith(("nothing", "no channel")) for n in result.report.notes)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        if x.sum() > 0:
            return self.conv(x)
        return x


def test_untraceable_model_names_the_line_and_suggests_the_export_frontend():
    with pytest.raises(TraceError) as e:
        graphprune.prune(Untraceable(), X, frontend="fx")
    text = one_line(e)
    assert "Untraceable at test_hostile.py:" in text and "in forward: `if x.sum() > 0:`" in text
    assert "use the export frontend (frontend='export')" in text


def test_untraceable_by_both_frontends_says_both_failed():
    with pytest.raises(TraceError) as e:
        graphprune.prune(Untraceable(), X)
    text = one_line(e)
    assert "`if x.sum() > 0:`" in text and "The torch.export frontend, tried next, failed too" in text
    assert "use the export frontend" not in text  # it was tried: no advice to try it


def test_a_criterion_returning_the_wrong_number_of_scores_is_refused(monkeypatch):
    monkeypatch.setitem(graphprune.CRITERIA, "half", lambda layer: layer.filters.abs().sum(1)[::2])
    with pytest.raises(ConfigError, match="criterion 'half' returned 4 scores for stem, which has 8 output channels; "
                                          "a criterion must return one score per row") as e:
        graphprune.prune(Net(), X, criterion="half")
    one_line(e)


def test_every_error_class_is_documented_in_the_readme_troubleshooting_section():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "## Troubleshooting" in readme
    section = readme.split("## Troubleshooting", 1)[1]

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    classes = {c.__name__ for c in subclasses(GraphpruneError) if c.__module__ == "graphprune.errors"}
    assert classes >= {"ConfigError", "ModelError", "TraceError", "VerificationError", "LoadError"}
    for name in classes:
        assert f"**`{name}`**" in section, f"{name} is not documented in README.md's Troubleshooting section"
