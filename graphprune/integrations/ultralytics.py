"""Fine-tune, save and deploy pruned ultralytics models with ultralytics' own tools.

graphprune hands back the user's own model (a ``DetectionModel``, ...) sliced
(``result.compact``) or masked (``result.masked``). ultralytics' trainers
would rebuild a dense model from its yaml and ``load()`` the weights into it,
silently dropping every weight whose shape changed; these keep the model::

    from graphprune.integrations import ultralytics as gpu

    trained = gpu.train(result.masked, data="data.yaml", epochs=10, imgsz=640)
    small = graphprune.reconstruct(trained).compact
    gpu.save_checkpoint(small, "pruned.pt")        # ultralytics.YOLO("pruned.pt") loads it as it is

A masked model is the user's model with mask hooks (see
:mod:`graphprune.masks`): it pickles into ultralytics' checkpoints, survives
its EMA's deep copies and its ``fuse()``, and keeps its dropped channels at zero.
Command line: ``python -m graphprune.integrations.ultralytics pruned.pt data=data.yaml epochs=10``.
"""

from __future__ import annotations

import copy
import sys
from datetime import datetime
from difflib import get_close_matches
from pathlib import Path

import torch
import torch.nn as nn
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.cfg import merge_equals_args, parse_key_value_pair
from ultralytics.models import yolo
from ultralytics.nn.tasks import guess_model_task

try:
    from ultralytics.nn.tasks import load_checkpoint  # 8.4
except ImportError:  # 8.3: the same function under its old name (untested here)
    from ultralytics.nn.tasks import attempt_load_one_weight as load_checkpoint
from ultralytics.utils import DEFAULT_CFG_DICT
from ultralytics.utils import callbacks as ultralytics_callbacks
from ultralytics.utils.torch_utils import unwrap_model

from .. import __version__ as GRAPHPRUNE_VERSION
from ..errors import ConfigError, LoadError
from ..masks import bake, channel_masks

__all__ = ["PrunedTrainerMixin", "PrunedDetectionTrainer", "PrunedSegmentationTrainer", "PrunedPoseTrainer",
           "PrunedOBBTrainer", "PrunedClassificationTrainer", "trainer_for", "train", "save_checkpoint",
           "channel_masks", "mask_violations", "parse_args", "main"]


# --- masked models ------------------------------------------------------------------------------------------

def mask_violations(model: nn.Module, masks: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Names of the tensors not exactly zero wherever their mask is 0 (empty: every dropped channel is zero).
    ``masks`` defaults to the model's own (:func:`graphprune.masks.channel_masks`); pass those the model had
    before training to check a trained, loaded or baked one against them (a tensor that is gone or has
    another shape counts as a violation)."""
    bad = []
    with torch.no_grad():
        for target, keep in (channel_masks(model) if masks is None else masks).items():
            owner, _, attr = target.rpartition(".")
            try:
                value = getattr(model.get_submodule(owner), attr)
                if value.ndim != keep.ndim or bool((value * (keep.to(value.device) == 0)).ne(0).any()):
                    bad.append(target)
            except (AttributeError, RuntimeError):
                bad.append(target)
    return bad


def _baked(model: nn.Module) -> nn.Module:
    """A copy with every mask applied and its hooks removed (plain tensors, exact zeros)."""
    model = copy.deepcopy(model)
    bake(model)
    return model


# --- trainers that train the model they are given --------------------------------------------------------------

def _classes(model: nn.Module) -> int | None:
    """The number of classes the model's head predicts (its ``nc``)."""
    head = model.model[-1] if isinstance(getattr(model, "model", None), nn.Sequential) else model
    return getattr(head, "nc", None)


class PrunedTrainerMixin:
    """Mix into an ultralytics trainer (before it) to train a pruned or masked model as it is: ``setup_model``
    keeps ``trainer.model`` or loads the checkpoint it names (``pruned.pt``; ``last.pt`` on resume), ``get_model``
    returns the module it is given. Data, loss, EMA, checkpoints, validation and resume are ultralytics' own."""

    def setup_model(self):
        ckpt = None
        if not isinstance(self.model, nn.Module):
            self.model, ckpt = load_checkpoint(self.model)
        self.model = self.get_model(weights=self.model, verbose=False)
        return ckpt

    def get_model(self, cfg=None, weights=None, verbose=True):
        if not isinstance(weights, nn.Module):
            raise ConfigError(
                f"{type(self).__name__} trains a pruned model as it is: pass the model (or its .pt), not only a "
                "config; a model built from the yaml would be the dense one"
            )
        model = weights.float()
        if getattr(self.args, "pretrained", None) not in (None, True, False) and not self.resume:
            raise ConfigError("pretrained=<weights> cannot be loaded into a pruned model (the shapes differ)")
        model.requires_grad_(True)
        return model

    def set_model_attributes(self):
        nc = _classes(self.model)
        if nc is not None and nc != self.data["nc"]:
            raise ConfigError(
                f"the model predicts {nc} classes but the dataset {self.args.data} has {self.data['nc']}; "
                "a pruned model keeps its head, so fine-tune it on data with the same classes"
            )
        super().set_model_attributes()


class PrunedDetectionTrainer(PrunedTrainerMixin, yolo.detect.DetectionTrainer):
    """ultralytics' DetectionTrainer, training the pruned model it is given."""


class PrunedSegmentationTrainer(PrunedTrainerMixin, yolo.segment.SegmentationTrainer):
    """ultralytics' SegmentationTrainer, training the pruned model it is given."""


class PrunedPoseTrainer(PrunedTrainerMixin, yolo.pose.PoseTrainer):
    """ultralytics' PoseTrainer, training the pruned model it is given."""


class PrunedOBBTrainer(PrunedTrainerMixin, yolo.obb.OBBTrainer):
    """ultralytics' OBBTrainer, training the pruned model it is given."""


class PrunedClassificationTrainer(PrunedTrainerMixin, yolo.classify.ClassificationTrainer):
    """ultralytics' ClassificationTrainer, training the pruned model it is given."""


TRAINERS = {
    "detect": PrunedDetectionTrainer, "segment": PrunedSegmentationTrainer, "pose": PrunedPoseTrainer,
    "obb": PrunedOBBTrainer, "classify": PrunedClassificationTrainer,
}


def trainer_for(task: str) -> type:
    """The pruned-model trainer class for an ultralytics task (``"detect"``, ``"segment"``, ...)."""
    if task not in TRAINERS:  # another task's trainer: class Mine(PrunedTrainerMixin, ThatTrainer)
        raise ConfigError(f"no pruned-model trainer for task {task!r}; tasks: {', '.join(TRAINERS)}")
    return TRAINERS[task]


# --- the public entry points ------------------------------------------------------------------------------------

def _plain_args(model: nn.Module) -> dict:
    """The model's ultralytics arguments as a plain dict (a trainer leaves a namespace)."""
    args = getattr(model, "args", None) or {}
    return dict(args) if isinstance(args, dict) else dict(vars(args))


def train(model_or_path: nn.Module | str | Path, callbacks: dict[str, list] | None = None, **args) -> nn.Module:
    """Fine-tune a pruned or masked ultralytics model with ultralytics' own trainer; return the trained model.

    ``model_or_path``: the model (``result.compact`` or ``result.masked``; not
    modified, a copy is trained) or an ultralytics checkpoint holding one
    (``pruned.pt``, or ``last.pt`` with ``resume=True``). ``args``: ultralytics'
    train arguments (``data``, ``epochs``, ``imgsz``, ``device``, ``project``...;
    ``imgsz`` and ``data`` default to the model's, as in ``YOLO.train``).
    ``callbacks``: event -> functions of the trainer, run after ultralytics' own.
    The task's trainer (:func:`trainer_for`) does EMA, ``last.pt``/``best.pt``,
    resuming and the final validation. Returns the model of ``best.pt`` (else
    ``last.pt``) as ultralytics loads it (float32 from the file's float16, eval
    mode, trainable): the user's model class, masks and all (reconstruct a
    masked one with :func:`graphprune.reconstruct`); ``pt_path`` names it.
    """
    resume = args.get("resume", False)
    if isinstance(model_or_path, (str, Path)):
        if not Path(model_or_path).is_file():
            raise LoadError(f"no checkpoint at {model_or_path}")
        path, model = str(model_or_path), load_checkpoint(str(model_or_path))[0]
        if resume is True:
            args["resume"] = path  # True alone would resume the latest run under runs/, whatever it is
    else:
        if resume is True:
            raise ConfigError("resume=True needs the checkpoint to resume: train('.../weights/last.pt', resume=True)")
        model = copy.deepcopy(unwrap_model(model_or_path))
        path = getattr(model, "pt_path", None) or f"{type(model).__name__}(in memory)"  # what args.yaml records
    defaults = {k: v for k, v in _plain_args(model).items() if k in ("imgsz", "data", "single_cls")}
    if not ({**defaults, **args}.get("data") or args.get("resume")):
        raise ConfigError("no dataset: pass data=<data.yaml> (a pruned model keeps its classes, so its own data)")
    task = args.pop("task", None) or getattr(model, "task", None) or guess_model_task(model)
    events = ultralytics_callbacks.get_default_callbacks()
    for event, functions in (callbacks or {}).items():
        events[event] = [*events[event], *functions]
    overrides = {**defaults, **args, "model": path, "task": task, "mode": "train"}
    trainer = trainer_for(task)(overrides=overrides, _callbacks=events)
    if trainer.ddp and not Path(trainer.args.model).is_file():  # DDP workers rebuild the trainer from args.model
        raise ConfigError("multi-GPU training reads the model from a file: pass the checkpoint's path")
    if not trainer.resume:
        trainer.model = model
    trainer.train()
    best = trainer.best if trainer.best.exists() else trainer.last
    if not best.exists():
        raise RuntimeError(f"training finished without a checkpoint in {trainer.wdir}")
    return load_checkpoint(str(best))[0].requires_grad_(True)


def save_checkpoint(model: nn.Module, path: str | Path, half: bool = False, keep_masks: bool = False) -> Path:
    """Save a pruned model as an ultralytics checkpoint that ``ultralytics.YOLO(path)`` loads as it is.

    The dict ultralytics' ``strip_optimizer`` writes (``model``, ``train_args``,
    ``epoch=-1``, no optimizer or EMA), so ``YOLO(path)`` predicts, validates,
    exports and trains (:func:`train`, or ``.train(trainer=PrunedDetectionTrainer)``)
    the pruned model. A masked model is saved with its masks applied (dense
    shapes, exact zeros, no hooks; it can still be reconstructed): reconstruct
    it first to save the small one.
    ``half=True`` stores float16 as ultralytics does; the default keeps float32.
    ``keep_masks=True`` keeps a masked model's mask hooks, so that training it
    (:func:`train`, ``graphprune finetune``) holds the dropped channels at zero.
    """
    path, source = Path(path), unwrap_model(model)
    model = (copy.deepcopy(source) if keep_masks else _baked(source)).eval()
    if hasattr(model, "criterion"):
        model.criterion = None
    model = model.half() if half else model.float()
    model.requires_grad_(False)
    model.args = args = {k: v for k, v in {**DEFAULT_CFG_DICT, **_plain_args(source)}.items() if k in DEFAULT_CFG_DICT}
    model.task = getattr(source, "task", None) or guess_model_task(source)
    checkpoint = {
        "date": datetime.now().astimezone().isoformat(), "version": ULTRALYTICS_VERSION,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)", "docs": "https://docs.ultralytics.com",
        "epoch": -1, "best_fitness": None, "stopper": None, "model": model, "ema": None, "updates": None,
        "modelopt": None, "optimizer": None, "scaler": None, "train_args": args, "train_metrics": None,
        "train_results": None,
        "graphprune": {"version": GRAPHPRUNE_VERSION, "parameters": sum(p.numel() for p in model.parameters())},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(checkpoint, partial)
    partial.replace(path)  # a failed save leaves no half-written checkpoint behind
    return path


USAGE = "graphprune finetune MODEL.pt key=value ... (ultralytics train arguments: data=, epochs=, imgsz=, ...)"


def parse_args(argv: list[str]) -> tuple[str, dict]:
    """The model and the train arguments of ``MODEL.pt key=value ...``, parsed as ultralytics' CLI parses them."""
    model, overrides = None, {}
    for arg in merge_equals_args(list(argv)):
        if "=" in arg:
            try:
                key, value = parse_key_value_pair(arg)
            except AssertionError as exc:
                raise ConfigError(f"{exc} in {arg!r}") from None
            overrides[key] = value
        elif isinstance(DEFAULT_CFG_DICT.get(arg), bool):
            overrides[arg] = True  # a bare boolean flag, as `yolo train ... resume`
        elif model is None:
            model = arg
        else:
            raise ConfigError(f"unexpected argument {arg!r}; usage: {USAGE}")
    model = overrides.pop("model", model)
    if model is None:
        raise ConfigError(f"no model given; usage: {USAGE}")
    unknown = [f"{k!r} (close: {', '.join(get_close_matches(k, DEFAULT_CFG_DICT)) or 'none'})"
               for k in overrides if k not in DEFAULT_CFG_DICT]
    if unknown:
        raise ConfigError(f"not an ultralytics train argument: {'; '.join(unknown)}")
    return str(model), overrides


def main(argv: list[str] | None = None) -> int:
    """``graphprune finetune MODEL.pt key=value ...``: fine-tune with :func:`train`, print the best checkpoint."""
    model, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    trained = train(model, **overrides)
    print(trained.pt_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
