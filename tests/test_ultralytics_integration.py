"""Fine-tuning, saving and deploying pruned ultralytics models with ultralytics' own tools.

Everything runs offline on CPU, on a synthetic 64-px detection dataset. The
pruned models are what graphprune hands back for a yolov8n: ``result.masked``
(the user's ``DetectionModel``, dropped channels held at zero by mask hooks)
and ``result.compact`` (the same class, sliced; its C2f blocks whose halves
keep unequal counts rebuilt). One masked model is trained (interrupted after
its first epoch, then resumed) and shared by the tests of the training path.
"""

import copy
import json
import os
import types

import numpy as np
import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
pytest.importorskip("ultralytics")
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, SegmentationModel  # noqa: E402

import graphprune  # noqa: E402
from graphprune.errors import ConfigError, LoadError  # noqa: E402
from graphprune.integrations import ultralytics as gpu  # noqa: E402
from graphprune.integrations.synthetic import write_detection_dataset  # noqa: E402

TRAIN = dict(imgsz=64, batch=8, device="cpu", workers=0, plots=False, amp=False, verbose=False, exist_ok=True)


def yolov8n() -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel("yolov8n.yaml", nc=3, verbose=False)


@pytest.fixture(scope="module")
def pruned():
    """yolov8n pruned at 0.5: result.masked and result.compact."""
    return graphprune.prune(yolov8n().eval(), torch.randn(1, 3, 64, 64), ratio=0.5)


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


class Interrupted(Exception):
    pass


def interrupt_after_first_epoch(trainer):
    if trainer.epoch == 0:
        raise Interrupted  # as if the run were killed once last.pt is written


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_detection_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def trained(data, pruned, tmp_path_factory):
    """A masked yolov8n trained for 2 epochs: interrupted after the first, resumed from last.pt."""
    project = tmp_path_factory.mktemp("runs")
    given = pruned.masked
    before = copy.deepcopy(given.state_dict())
    with pytest.raises(Interrupted):
        gpu.train(given, data=str(data), epochs=2, project=str(project), name="masked", val=False,
                  callbacks={"on_model_save": [interrupt_after_first_epoch]}, **TRAIN)
    last = project / "masked" / "weights" / "last.pt"
    interrupted = torch.load(last, weights_only=False)
    model = gpu.train(last, resume=True)
    return types.SimpleNamespace(given=given, before=before, model=model, interrupted=interrupted,
                                 weights=last.parent, run=last.parent.parent)


def test_synthetic_dataset_is_deterministic_yolo_format(tmp_path):
    a, b = write_detection_dataset(tmp_path / "a", seed=3), write_detection_dataset(tmp_path / "b", seed=3)
    files = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*.*") if p.suffix in {".png", ".txt"})
    assert len(files) == 2 * (16 + 8)
    assert all((a.parent / f).read_bytes() == (b.parent / f).read_bytes() for f in files)
    rows = np.array([r.split() for f in files if f.suffix == ".txt" for r in (a.parent / f).read_text().splitlines()],
                    dtype=float)
    assert set(rows[:, 0]) <= {0, 1, 2} and (rows[:, 1:] > 0).all() and (rows[:, 1:] <= 1).all()
    assert "names:" in a.read_text() and str(a.parent) in a.read_text()


def test_trained_masked_model_is_the_users_class_with_every_mask_holding(trained):
    model = trained.model
    assert type(model) is DetectionModel
    masks = gpu.channel_masks(model)
    assert set(masks) == set(gpu.channel_masks(trained.given)) and len(masks) > 100
    assert all(torch.equal(masks[k], v.to(masks[k].dtype)) for k, v in gpu.channel_masks(trained.given).items())
    assert gpu.mask_violations(model) == [] and gpu.mask_violations(model, gpu.channel_masks(trained.given)) == []
    assert all(p.requires_grad for p in model.parameters())
    assert list(model.state_dict()) == list(trained.before)  # the user's names, no mask tensors among them
    changed = model.state_dict()["model.3.conv.weight"]
    assert not torch.equal(changed, trained.before["model.3.conv.weight"])  # it was trained
    assert torch.equal(trained.given.state_dict()["model.3.conv.weight"], trained.before["model.3.conv.weight"])


def test_trained_masked_model_reconstructs_to_a_compact_model_equal_to_it(trained, pruned, tmp_path):
    rebuilt = graphprune.reconstruct(trained.model)
    assert rebuilt.report.exact and rebuilt.report.max_rel_error <= 1e-4
    assert type(rebuilt.compact) is DetectionModel
    assert rebuilt.report.params_after == pruned.report.params_after
    yolo = YOLO(str(gpu.save_checkpoint(rebuilt.compact, tmp_path / "pruned.pt")))
    assert parameters(yolo.model) == pruned.report.params_after
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert len(yolo.predict(image, imgsz=64, verbose=False)) == 1


def test_checkpoints_hold_the_masks_and_the_interrupted_one_resumes(trained):
    assert trained.interrupted["epoch"] == 0 and trained.interrupted["optimizer"] is not None
    given = gpu.channel_masks(trained.given)
    assert gpu.mask_violations(trained.interrupted["ema"].float(), given) == []
    for name in ("last.pt", "best.pt"):
        checkpoint = torch.load(trained.weights / name, weights_only=False)
        assert type(checkpoint["model"]) is DetectionModel
        assert len(gpu.channel_masks(checkpoint["model"])) == len(given)
        assert gpu.mask_violations(checkpoint["model"].float(), given) == []
    epochs = (trained.run / "results.csv").read_text().splitlines()[1:]
    assert [int(float(row.split(",")[0])) for row in epochs] == [1, 2]  # resumed at epoch 2, not restarted


def test_mask_violations_finds_dropped_channels_that_are_not_zero(pruned):
    masks = gpu.channel_masks(pruned.masked)
    biases = [name for name in masks if name.endswith("bn.bias")]  # BN biases start at zero
    assert gpu.mask_violations(yolov8n(), masks) == [name for name in masks if name not in biases]
    assert set(gpu.mask_violations(pruned.compact, masks)) == set(masks)  # sliced: another shape
    assert gpu.mask_violations(pruned.masked) == [] and gpu.mask_violations(torch.nn.Identity(), masks) == list(masks)


def test_masked_batchnorm_gamma_stays_out_of_weight_decay(pruned):
    model = copy.deepcopy(pruned.masked)
    optimizer = gpu.PrunedDetectionTrainer.__new__(gpu.PrunedDetectionTrainer).build_optimizer(
        model, name="SGD", lr=0.01, momentum=0.9, decay=1e-4)
    gamma = model.model[1].bn.weight
    group = next(g for g in optimizer.param_groups if any(p is gamma for p in g["params"]))
    assert group["param_group"] == "bn" and group["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_masked_model_pickles_and_fuses_with_masks_holding(pruned, tmp_path):
    model = copy.deepcopy(pruned.masked).eval()
    torch.save({"model": copy.deepcopy(model).half()}, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)["model"].float().eval()
    assert set(gpu.channel_masks(loaded)) == set(gpu.channel_masks(model)) and gpu.mask_violations(loaded) == []
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)[0]
        fused = copy.deepcopy(model).fuse(verbose=False)
        assert torch.allclose(fused(x)[0], reference, atol=1e-3)
        assert torch.allclose(loaded(x)[0], reference, atol=0.05)  # float16 in the file


def test_masked_model_saves_as_a_plain_checkpoint(pruned, tmp_path):
    model = pruned.masked
    path = gpu.save_checkpoint(model, tmp_path / "masked.pt")
    loaded = YOLO(str(path)).model
    assert gpu.channel_masks(loaded) == {}  # baked: plain tensors
    assert parameters(loaded) == parameters(yolov8n())
    assert gpu.mask_violations(loaded, gpu.channel_masks(model)) == []
    assert gpu.channel_masks(model)  # the model itself keeps its masks
    assert graphprune.reconstruct(loaded).report.exact  # and a baked one still reconstructs


def test_pruned_checkpoint_loads_predicts_and_validates_in_ultralytics(data, pruned, tmp_path):
    compact = pruned.compact
    assert parameters(compact) == pruned.report.params_after < parameters(yolov8n())
    path = gpu.save_checkpoint(compact, tmp_path / "pruned.pt")
    yolo = YOLO(str(path))
    assert type(yolo.model) is DetectionModel and yolo.task == "detect"
    assert parameters(yolo.model) == parameters(compact)
    assert type(yolo.model.model[2]).__name__ == "C2f" and yolo.model.model[2].i == 2
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(yolo.model(x)[0], compact(x)[0])  # float32 by default: the model as it is
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert len(yolo.predict(image, imgsz=64, verbose=False)) == 1
    metrics = yolo.val(data=str(data), imgsz=64, device="cpu", workers=0, plots=False, verbose=False,
                       project=str(tmp_path), name="val")
    assert 0 <= metrics.box.map <= 1
    exported = YOLO(str(path)).export(format="onnx", imgsz=64, simplify=False)  # simplify would pip-install onnxslim
    onnxruntime = pytest.importorskip("onnxruntime")
    (out,) = onnxruntime.InferenceSession(exported).run(None, {"images": x.numpy()})
    with torch.no_grad():
        assert np.allclose(out, compact(x)[0].numpy(), atol=1e-3)


def test_command_line_fine_tunes_a_pruned_checkpoint(data, pruned, tmp_path, capsys):
    compact = pruned.compact
    path = gpu.save_checkpoint(compact, tmp_path / "pruned.pt")
    args = [f"{k}={v}" for k, v in TRAIN.items()]
    assert gpu.main([str(path), f"data={data}", "epochs=1", f"project={tmp_path}", "name=cli", *args]) == 0
    best = capsys.readouterr().out.strip().splitlines()[-1]
    trained = YOLO(best).model
    assert parameters(trained) == parameters(compact)
    assert type(trained.model[2]).__name__ == "C2f"
    assert not torch.equal(trained.model[2].cv1.conv.weight.float(), compact.model[2].cv1.conv.weight)


def test_command_line_arguments_parse_as_ultralytics_does():
    model, args = gpu.parse_args(["last.pt", "data=d.yaml", "epochs=3", "lr0=1e-3", "imgsz", "=", "64", "resume"])
    assert model == "last.pt" and args == {"data": "d.yaml", "epochs": 3, "lr0": 1e-3, "imgsz": 64, "resume": True}
    assert gpu.parse_args(["model=p.pt", "name=007"]) == ("p.pt", {"name": "007"})
    for bad in (["p.pt", "epoch=3"], ["data=d.yaml"], ["a.pt", "b.pt"], ["p.pt", "epochs="]):
        with pytest.raises(ConfigError):
            gpu.parse_args(bad)


def test_train_refuses_what_it_cannot_do_before_training(pruned, tmp_path):
    with pytest.raises(ConfigError, match="data="):
        gpu.train(pruned.masked, epochs=1)
    with pytest.raises(ConfigError, match="last.pt"):
        gpu.train(pruned.masked, data="d.yaml", resume=True)
    with pytest.raises(LoadError):
        gpu.train(tmp_path / "missing.pt", data="d.yaml")
    with pytest.raises(ConfigError, match="task"):
        gpu.trainer_for("depth")


def test_a_dataset_with_other_classes_is_refused():
    trainer = gpu.PrunedDetectionTrainer.__new__(gpu.PrunedDetectionTrainer)
    trainer.model, trainer.data, trainer.args = yolov8n(), {"nc": 5}, types.SimpleNamespace(data="five.yaml")
    with pytest.raises(ConfigError, match="3 classes"):
        trainer.set_model_attributes()


@pytest.mark.slow
def test_pruned_checkpoint_trains_through_yolo_with_the_pruned_trainer(data, pruned, tmp_path):
    compact = pruned.compact
    yolo = YOLO(str(gpu.save_checkpoint(compact, tmp_path / "pruned.pt")))
    yolo.train(trainer=gpu.PrunedDetectionTrainer, data=str(data), epochs=1, project=str(tmp_path), name="yolo",
               **TRAIN)
    assert parameters(yolo.model) == parameters(compact) and type(yolo.model.model[2]).__name__ == "C2f"


@pytest.mark.slow
def test_masked_segmentation_model_trains_with_the_segmentation_trainer(tmp_path):
    data = write_detection_dataset(tmp_path / "segments", segments=True)
    torch.manual_seed(0)
    model = SegmentationModel("yolov8n-seg.yaml", nc=3, verbose=False).eval()
    masked = graphprune.prune(model, torch.randn(1, 3, 64, 64), ratio=0.5).masked
    trained = gpu.train(masked, data=str(data), epochs=1, project=str(tmp_path), name="segment", **TRAIN)
    assert type(trained) is SegmentationModel and trained.task == "segment"
    assert len(gpu.channel_masks(trained)) == len(gpu.channel_masks(masked)) and gpu.mask_violations(trained) == []
    assert graphprune.reconstruct(trained).report.exact


def test_command_line_prunes_a_checkpoint_and_fine_tunes_the_masked_one(data, tmp_path, capsys):
    from graphprune.cli import main

    best = gpu.save_checkpoint(yolov8n().eval(), tmp_path / "best.pt")  # a trained model, as ultralytics saves it
    pruned, masked = tmp_path / "pruned.pt", tmp_path / "masked.pt"
    assert main(["prune", str(best), "--trust-checkpoint", "--input-shape", "1,3,64,64", "-o", str(pruned),
                 "--masked", str(masked), "--no-latency", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert parameters(YOLO(str(pruned)).model) == report["params"]["after"] < report["params"]["before"]
    assert main(["finetune", str(masked), f"data={data}", "epochs=1"]) == 1  # a pickle needs the trust flag
    assert "--trust-checkpoint" in capsys.readouterr().err
    args = [f"{k}={v}" for k, v in TRAIN.items()]
    assert main(["finetune", str(masked), "--trust-checkpoint", f"data={data}", "epochs=1", f"project={tmp_path}",
                 "name=masked", *args]) == 0
    trained = YOLO(capsys.readouterr().out.strip().splitlines()[-1]).model
    assert gpu.channel_masks(trained) and gpu.mask_violations(trained) == []
    rebuilt = graphprune.reconstruct(trained)
    assert rebuilt.report.exact and rebuilt.report.params_after == report["params"]["after"]
