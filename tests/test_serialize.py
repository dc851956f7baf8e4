"""Save -> load round trips; broken, edited or foreign files are refused clearly."""

import json

import pytest
import torch
import torchvision

import graphprune
from graphprune.errors import LoadError
from graphprune.serialize import decode_indices, encode_indices


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)  # split sizes and views rewritten
    x = torch.randn(1, 3, 64, 64)
    result = graphprune.prune(model, x, ratio=0.5)
    path = graphprune.save(result, tmp_path_factory.mktemp("s") / "shufflenet")
    return result, path, x


def test_round_trip_rebuilds_the_compact_model_with_the_same_outputs(saved):
    result, path, x = saved
    fresh = torchvision.models.shufflenet_v2_x0_5(num_classes=10)  # other random weights: all replaced
    loaded = graphprune.load(path, fresh)
    batch = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(batch), result.compact(batch))
    assert sum(p.numel() for p in loaded.parameters()) == result.report.params_after
    assert not loaded.training


def test_plan_json_records_versions_inputs_and_kept_indices(saved):
    result, path, _ = saved
    doc = json.loads((path / "plan.json").read_text())
    assert doc["versions"]["torch"] == torch.__version__
    assert doc["example_inputs"] == [{"shape": [1, 3, 64, 64], "dtype": "float32"}]
    entry = doc["kept"]["conv1.0.weight:0"]
    assert decode_indices(entry["indices"]) == result.plan.kept_indices("conv1.0.weight", 0).tolist()


def test_index_ranges_round_trip():
    for indices in ([], [0], [0, 1, 2, 5, 7, 8], list(range(100)), [3, 9, 10]):
        assert decode_indices(encode_indices(indices)) == indices


def copy_saved(path, tmp_path):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(path, target)
    return target


def test_edited_plan_that_breaks_coupling_is_refused(saved, tmp_path):
    _, path, _ = saved
    target = copy_saved(path, tmp_path)
    doc = json.loads((target / "plan.json").read_text())
    key = "conv1.0.weight:0"
    kept = decode_indices(doc["kept"][key]["indices"])
    doc["kept"][key]["indices"] = encode_indices(kept[1:])  # drop a channel its BatchNorm still keeps
    (target / "plan.json").write_text(json.dumps(doc))
    with pytest.raises(LoadError, match="disagree with the channels coupled to it"):
        graphprune.load(target, torchvision.models.shufflenet_v2_x0_5(num_classes=10))


def test_weights_of_the_wrong_shape_are_refused(saved, tmp_path):
    _, path, _ = saved
    target = copy_saved(path, tmp_path)
    weights = torch.load(target / "weights.pt", weights_only=True)
    weights["fc.weight"] = torch.zeros(10, 7)
    torch.save(weights, target / "weights.pt")
    with pytest.raises(LoadError, match=r"fc.weight has shape \(10, 7\)"):
        graphprune.load(target, torchvision.models.shufflenet_v2_x0_5(num_classes=10))


def test_plan_for_another_architecture_is_refused(saved):
    _, path, _ = saved
    with pytest.raises(LoadError, match="another architecture"):
        graphprune.load(path, torchvision.models.shufflenet_v2_x1_0(num_classes=10))


@pytest.mark.parametrize("damage", ["truncate-weights", "garbage-plan", "missing-plan"])
def test_damaged_files_are_refused_with_the_reason(saved, tmp_path, damage):
    _, path, _ = saved
    target = copy_saved(path, tmp_path)
    if damage == "truncate-weights":
        data = (target / "weights.pt").read_bytes()
        (target / "weights.pt").write_bytes(data[: len(data) // 2])
        match = "truncated, corrupted"
    elif damage == "garbage-plan":
        (target / "plan.json").write_text("{not json")
        match = "not valid JSON"
    else:
        (target / "plan.json").unlink()
        match = "plan.json is missing"
    with pytest.raises(LoadError, match=match):
        graphprune.load(target, torchvision.models.shufflenet_v2_x0_5(num_classes=10))
