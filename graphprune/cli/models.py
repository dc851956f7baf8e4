"""What MODEL names: a torchvision model, an ultralytics config or checkpoint,
or ``package.module:factory``; and loading a state dict into it safely."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import warnings

import torch
import torch.nn as nn

from ..errors import first_line
from .arguments import UsageError, parse_shape


def build_ultralytics(spec: str, trust_checkpoint: bool) -> nn.Module:
    """An ultralytics model from a yaml config (random weights) or a ``.pt`` checkpoint."""
    if spec.endswith(".pt") and not trust_checkpoint:
        raise UsageError(
            f"{spec} is a pickled checkpoint: loading it runs code stored in the file. "
            "Pass --trust-checkpoint if you trust where it came from"
        )
    if spec.endswith(".pt") and not os.path.isfile(spec):
        raise UsageError(f"checkpoint {spec!r} does not exist")
    os.environ.setdefault("YOLO_OFFLINE", "1")  # never reach for the network
    try:
        from ultralytics import YOLO
    except ImportError:
        raise UsageError(f"{spec} needs ultralytics: pip install 'graphprune[yolo]'") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return YOLO(spec).model.float().eval()
    except Exception as exc:
        first = first_line(exc)
        raise UsageError(f"ultralytics cannot build {spec!r}: {first[:200]}") from None


def build_timm(name: str) -> nn.Module:
    """A timm model with random weights (``--weights`` loads yours)."""
    try:
        import timm
    except ImportError:
        raise UsageError(f"timm:{name} needs timm: pip install 'graphprune[timm]'") from None
    if name not in timm.list_models():
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise UsageError(f"unknown timm model {name!r}{hint}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(name, pretrained=False).eval()


def build_model(spec: str, trust_checkpoint: bool = False) -> nn.Module:
    """A torchvision model name, an ultralytics ``yolov8n.yaml`` / ``.pt``, or
    ``package.module:factory``."""
    if spec.endswith((".yaml", ".yml", ".pt")):
        return build_ultralytics(spec, trust_checkpoint)
    if spec.startswith("timm:"):
        return build_timm(spec.removeprefix("timm:"))
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UsageError(f"cannot import {module_name!r} for MODEL {spec!r}: {exc}") from None
        factory = getattr(module, attr, None)
        if factory is None:
            raise UsageError(f"{module_name!r} has no attribute {attr!r} (MODEL {spec!r})")
        model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
        if not isinstance(model, nn.Module):
            raise UsageError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
        return model.eval()
    import torchvision

    names = torchvision.models.list_models()
    if spec not in names:
        close = difflib.get_close_matches(spec, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; use a torchvision model name or package.module:factory"
        raise UsageError(f"unknown model {spec!r}{hint}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torchvision.models.get_model(spec, weights=None).eval()


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict safely (``weights_only=True``); any mismatch is an error."""
    if not os.path.isfile(path):
        raise UsageError(f"weights file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = first_line(exc)
        raise UsageError(
            f"cannot read weights {path!r} as a plain state dict ({first[:200]}); it may be truncated, "
            "or a pickled checkpoint, which graphprune does not unpickle"
        ) from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UsageError(f"{path!r} holds a {type(state).__name__}, not a state dict")
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        raise UsageError(f"weights {path!r} do not fit {type(model).__name__}: keys " + ", ".join(parts))
    model.load_state_dict(state, strict=True)


DEFAULT_SHAPE = (1, 3, 224, 224)


def _pair(size: object) -> tuple[int, int] | None:
    """An image size given as ``640``, ``[640]`` or ``[480, 640]``, as (height, width)."""
    if isinstance(size, int) and size > 0:
        return size, size
    if isinstance(size, (list, tuple)) and 1 <= len(size) <= 2 and all(isinstance(v, int) and v > 0 for v in size):
        return (size[0], size[-1])
    return None


def ultralytics_shape(model: nn.Module) -> tuple[tuple[int, ...], str] | None:
    """An ultralytics model's own input: its ``imgsz`` (a checkpoint's training one, 640 for a config)."""
    args = getattr(model, "args", None)
    imgsz = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    imgsz = 640 if imgsz is None else imgsz  # ultralytics' own default
    size = _pair(imgsz)
    if size is None:
        return None
    yaml = getattr(model, "yaml", None)
    channels = yaml.get("channels", 3) if isinstance(yaml, dict) else 3
    return (1, int(channels), *size), f"ultralytics' imgsz {imgsz}"


def timm_shape(model: nn.Module) -> tuple[tuple[int, ...], str] | None:
    cfg = getattr(model, "pretrained_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if isinstance(size, (list, tuple)) and len(size) == 3:
        return (1, *(int(v) for v in size)), "timm's pretrained_cfg input_size"
    return None


def torchvision_shape(name: str) -> tuple[tuple[int, ...], str] | None:
    """The size a torchvision model's weights are evaluated at (their transforms' crop, else resize)."""
    import torchvision

    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except Exception:  # no weights enum: no size of its own
        return None
    size = _pair(getattr(transforms, "crop_size", None) or getattr(transforms, "resize_size", None))
    return ((1, 3, *size), "the evaluation crop of torchvision's weights") if size else None


def native_input_shape(spec: str, model: nn.Module) -> tuple[tuple[int, ...], str]:
    """The input MODEL is made for, batch 1, and where that comes from: what
    its framework trains and exports it at (an ultralytics model's ``imgsz``,
    timm's ``input_size``, torchvision's evaluation crop), so the ONNX file
    takes the images the user's deployment code feeds it; else 1x3x224x224."""
    if spec.endswith((".yaml", ".yml", ".pt")):
        found = ultralytics_shape(model)
    elif spec.startswith("timm:"):
        found = timm_shape(model)
    elif ":" in spec:
        found = None
    else:
        found = torchvision_shape(spec)
    return found or (DEFAULT_SHAPE, "graphprune's default")


def model_and_inputs(args: argparse.Namespace) -> tuple[nn.Module, tuple[torch.Tensor, ...], str | None]:
    """The model, its example inputs, and a note where the input shape was not given."""
    model = build_model(args.model, args.trust_checkpoint)
    if args.weights:
        load_weights(model, args.weights)
    note = None
    if args.input_shape is None:
        shape, source = native_input_shape(args.model, model)
        note = f"example input {'x'.join(map(str, shape))}: the model's own ({source}); --input-shape sets another"
    else:
        shape = parse_shape(args.input_shape)
    return model, (torch.randn(shape, generator=torch.Generator().manual_seed(0)),), note
