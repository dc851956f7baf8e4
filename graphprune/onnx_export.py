"""Export a model to ONNX and check the file on ONNX Runtime.

:func:`export_onnx` writes one self-contained ``.onnx`` file (weights inside,
unless they exceed protobuf's 2 GB limit), runs ``onnx.checker`` on it, and
runs it on ONNX Runtime (CPU) next to PyTorch on the same inputs: the example
inputs and, with a dynamic batch, a random batch of another size. The file
only appears at ``path`` once every check has passed; on failure nothing is
left behind.

The TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) is
tried first: on the CNNs graphprune compiles it writes the same checked file
in a tenth of the time (resnet18: 0.5 s against 4-6 s). Where it fails
(or ONNX Runtime disagrees with PyTorch on its file), the ``torch.export``-based
exporter (``dynamo=True``) is used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
from torch.utils._pytree import tree_leaves

from .contract import ContractOutputs
from .errors import ConfigError, ExportError, first_line
from .numerics import as_inputs, compare
from .onnx_latency import onnx_feed
from .onnx_rewrites import default_opset, rewrite_for_onnxruntime

EXPORTERS = ("auto", "dynamo", "legacy")
# Protobuf cannot serialise a message over 2 GiB; above this many bytes of
# weights the exporters must write them as external data.
_EXTERNAL_DATA_BYTES = int(0.9 * 2**31)


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote and how well ONNX Runtime agrees with PyTorch.

    ``max_abs_error`` is the largest absolute difference between ONNX Runtime's
    and PyTorch's outputs over every batch in ``batch_sizes``;
    ``fallback_reason`` says why the dynamo exporter was not used, if it was
    tried first and failed.
    """

    path: Path
    exporter: str
    opset: int
    size_bytes: int
    max_abs_error: float
    max_rel_error: float
    tolerance: float
    dynamic_batch: bool
    batch_sizes: tuple[int, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    seconds: float
    external_data: tuple[Path, ...] = ()
    fallback_reason: str | None = None
    #: rewrites into forms ONNX Runtime runs faster (graphprune.onnx_rewrites), each with its count
    rewrites: tuple[str, ...] = ()

    def __str__(self) -> str:
        batch = "dynamic" if self.dynamic_batch else "fixed"
        return (
            f"{self.path.name}: {self.size_bytes / 1e6:.2f} MB, {self.exporter} exporter, opset {self.opset}, "
            f"{batch} batch (checked {', '.join(map(str, self.batch_sizes))}), "
            f"max abs error vs PyTorch {self.max_abs_error:.3g}" + "".join(f", {r}" for r in self.rewrites)
        )


def export_onnx(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence[torch.Tensor],
    path: str | os.PathLike,
    *,
    dynamic_batch: bool = True,
    opset: int | None = None,
    exporter: str = "auto",
    tolerance: float = 1e-4,
    outputs: tuple | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    rewrite: bool = True,
) -> OnnxExport:
    """Export ``model`` to ``path`` as ONNX, checked on ONNX Runtime.

    Example::

        import torch, torchvision, graphprune
        from graphprune.onnx_export import export_onnx

        x = torch.randn(1, 3, 224, 224)
        result = graphprune.prune(torchvision.models.resnet18(), x, ratio=0.5)
        info = export_onnx(result.compact, x, "resnet18_pruned.onnx")
        print(info)   # size, exporter, opset, batches checked, max abs error vs PyTorch

    ``dynamic_batch`` makes dim 0 of every input symbolic (shared by all
    inputs); it is checked by running a second batch of another size.
    ``exporter`` is ``"auto"`` (legacy, then dynamo where legacy fails),
    ``"dynamo"`` or ``"legacy"``; ``opset`` ``None`` takes the exporter's
    default. The model is exported in eval mode (its mode is restored
    afterwards). Raises :class:`~graphprune.errors.ExportError` if no exporter
    succeeds or ONNX Runtime's outputs differ from PyTorch's by more than
    ``tolerance``, absolute or relative to the output's largest magnitude
    (box coordinates in pixels carry float32 round-off above 1e-4).
    ``outputs``: leaf paths of the model's output to export (the output
    contract, ``result.state.contract.eval``; default all);
    ``input_names`` / ``output_names``: the file's names (default ``input``,
    ``output`` or ``output_0``, ``output_1``, ...). ``rewrite``: ops put into
    forms ONNX Runtime runs faster, checked like the rest (see
    :mod:`graphprune.onnx_rewrites`); False writes the exporter's graph as is.
    """
    inputs, path = _checked(model, example_inputs, path, dynamic_batch, exporter)

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    exported = model if outputs is None else ContractOutputs(model, outputs)
    try:
        return _export_checked(exported, inputs, path, dynamic_batch, opset, exporter, tolerance,
                               (input_names, output_names), rewrite)
    finally:
        for m, training in modes:
            m.training = training


def _checked(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], path: str | os.PathLike,
             dynamic_batch: bool, exporter: str) -> tuple[tuple[torch.Tensor, ...], Path]:
    """The arguments of :func:`export_onnx`, checked; the folder made."""
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}; got {exporter!r}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    inputs = as_inputs(example_inputs)
    if not inputs or not all(isinstance(x, torch.Tensor) for x in inputs):
        raise ConfigError("example_inputs must be a tensor or a non-empty sequence of tensors")
    if dynamic_batch and any(x.dim() == 0 for x in inputs):
        raise ConfigError(
            "dynamic_batch needs every input to have a batch dimension; pass dynamic_batch=False"
        )
    path = Path(path)
    if path.suffix != ".onnx":
        raise ConfigError(f"path must end in .onnx; got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return inputs, path


def _export_checked(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: Path,
    dynamic_batch: bool,
    opset: int | None,
    exporter: str,
    tolerance: float,
    names: tuple[Sequence[str] | None, Sequence[str] | None] = (None, None),
    rewrite: bool = True,
) -> OnnxExport:
    start = time.perf_counter()
    batches, expected = _reference_outputs(model, inputs, dynamic_batch)
    input_names, output_names = names
    job = _Job(
        model=model,
        batches=batches,
        expected=expected,
        input_names=tuple(input_names) if input_names else
        ("input",) if len(inputs) == 1 else tuple(f"input_{i}" for i in range(len(inputs))),
        output_names=tuple(output_names) if output_names else ("output",)
        if len(expected[0]) == 1
        else tuple(f"output_{i}" for i in range(len(expected[0]))),
        dynamic_batch=dynamic_batch,
        opset=opset,
        external_data=_weight_bytes(model) > _EXTERNAL_DATA_BYTES,
        tolerance=tolerance,
        rewrite=rewrite,
    )
    tried = ["legacy", "dynamo"] if exporter == "auto" else [exporter]
    failures: list[str] = []
    for name in tried:
        try:
            max_abs, max_rel, extra, rewrites = _export_one(job, name, path)
            break
        except Exception as exc:
            failures.append(f"{name} exporter: {_first_line(exc)}")
            last = exc
    else:
        if isinstance(last, ExportError) and len(tried) == 1:
            raise last
        raise ExportError(f"could not export {type(model).__name__} to ONNX: {'; '.join(failures)}") from last
    proto = onnx.load(str(path), load_external_data=False)
    return OnnxExport(
        path=path,
        exporter=name,
        opset=default_opset(proto),
        size_bytes=path.stat().st_size + sum(p.stat().st_size for p in extra),
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        tolerance=tolerance,
        dynamic_batch=dynamic_batch,
        batch_sizes=tuple(int(b[0].shape[0]) for b in batches),
        input_names=job.input_names,
        output_names=job.output_names,
        seconds=time.perf_counter() - start,
        external_data=extra,
        fallback_reason=failures[0] if failures else None,
        rewrites=rewrites,
    )


def _reference_outputs(model: nn.Module, inputs: tuple[torch.Tensor, ...],
                       dynamic_batch: bool) -> tuple[list[tuple[torch.Tensor, ...]], list[list[torch.Tensor]]]:
    """The batches to check (the example, and with a dynamic batch one of
    another size) and PyTorch's outputs on them."""
    batches = [inputs]
    if dynamic_batch:
        batches.append(_other_batch(inputs, 3 if inputs[0].shape[0] != 3 else 2))
    with torch.no_grad():
        expected = [tree_leaves(model(*inputs))]
        if dynamic_batch:
            try:
                expected.append(tree_leaves(model(*batches[1])))
            except Exception as exc:
                raise ExportError(
                    f"{type(model).__name__} fails in PyTorch with batch {batches[1][0].shape[0]} "
                    f"({_first_line(exc)}); pass dynamic_batch=False to export a fixed batch"
                ) from exc
    return batches, expected


@dataclass(frozen=True)
class _Job:
    """One model to export, with the PyTorch outputs ONNX Runtime must reproduce."""

    model: nn.Module
    batches: list[tuple[torch.Tensor, ...]]
    expected: list[list[torch.Tensor]]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_batch: bool
    opset: int | None
    external_data: bool
    tolerance: float
    rewrite: bool = True


def _export_one(job: _Job, exporter: str, path: Path) -> tuple[float, float, tuple[Path, ...], tuple[str, ...]]:
    """Export with one exporter, rewrite for ONNX Runtime, check, and move into
    place: (max abs error, max rel error, external data files, rewrites).
    Leaves nothing behind if it raises."""
    # Export into a private folder under the final name (external data files
    # refer to it by name), check there, then move into place.
    workdir = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent))
    try:
        staged = workdir / path.name
        _EXPORT[exporter](job, staged)
        rewrites = rewrite_for_onnxruntime(staged) if job.rewrite and not job.external_data else ()
        onnx.checker.check_model(str(staged))
        errors = _check_on_onnxruntime(job, staged, exporter)
        extra = sorted(p for p in workdir.iterdir() if p != staged)
        if extra and not job.external_data:
            raise ExportError(
                f"the {exporter} exporter wrote external data ({', '.join(p.name for p in extra)}) "
                "for a model under 2 GB"
            )
        for p in extra:
            os.replace(p, path.parent / p.name)
        os.replace(staged, path)  # last, so `path` appears only when complete
        return (*errors, tuple(path.parent / p.name for p in extra), rewrites)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _export_dynamo(job: _Job, path: Path) -> None:
    inputs, dynamic_shapes = job.batches[0], None
    if job.dynamic_batch:
        batch = torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} for _ in inputs)
        # torch.export specialises a dimension of size 1 to a constant (the
        # "0/1 specialisation"), so a batch of one cannot be traced as dynamic.
        inputs = tuple(x if x.shape[0] > 1 else x.expand(2, *x.shape[1:]).contiguous() for x in inputs)
    kwargs = {} if job.opset is None else {"opset_version": job.opset}
    torch.onnx.export(
        job.model,
        inputs,
        str(path),
        dynamo=True,
        input_names=list(job.input_names),
        output_names=list(job.output_names),
        dynamic_shapes=dynamic_shapes,
        external_data=job.external_data,
        verbose=False,
        **kwargs,
    )


def _export_legacy(job: _Job, path: Path) -> None:
    inputs, dynamic_axes = job.batches[0], None
    if job.dynamic_batch:
        # Outputs whose dim 0 follows the batch in both checked batches are named "batch" too.
        sizes = [b[0].shape[0] for b in job.batches]
        dynamic_axes = {n: {0: "batch"} for n in job.input_names}
        for n, *ys in zip(job.output_names, *job.expected):
            if all(y.dim() > 0 and y.shape[0] == b for y, b in zip(ys, sizes)):
                dynamic_axes[n] = {0: "batch"}
    kwargs = {} if job.opset is None else {"opset_version": job.opset}
    with warnings.catch_warnings():
        # It warns that it is deprecated: it is the fallback, chosen knowingly.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # A batch norm in train mode in an eval export is a weight
        # standardisation (timm's StdConv): exported as it computes, as meant.
        warnings.filterwarnings("ignore", message=".*operator 'batch_norm' is set to train=True")
        # output_names must be given: without them, with dynamic_axes, the
        # legacy exporter reads `model.graph.outputs()`, which an
        # fx.GraphModule's graph does not have.
        torch.onnx.export(
            job.model,
            inputs,
            str(path),
            dynamo=False,
            input_names=list(job.input_names),
            output_names=list(job.output_names),
            dynamic_axes=dynamic_axes,
            **kwargs,
        )


_EXPORT = {"dynamo": _export_dynamo, "legacy": _export_legacy}


def run_onnxruntime(session: ort.InferenceSession, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Run ``session`` on ``inputs`` (in the order of the session's inputs)."""
    return session.run(None, onnx_feed(session, inputs))


def _check_on_onnxruntime(job: _Job, path: Path, exporter: str) -> tuple[float, float]:
    """Largest (absolute, relative) error of ONNX Runtime's outputs against PyTorch's, over the batches."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a failing run is reported in the ExportError, not logged as well
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst_abs = worst_rel = 0.0
    hint = " (if the model fixes its batch size, pass dynamic_batch=False)" if job.dynamic_batch else ""
    for batch, expected in zip(job.batches, job.expected):
        where = f"the {exporter}-exported model with batch {batch[0].shape[0]}"
        try:
            got = [torch.from_numpy(np.asarray(y)) for y in run_onnxruntime(session, batch)]
        except Exception as exc:
            raise ExportError(f"ONNX Runtime fails on {where}: {_first_line(exc)}{hint}") from exc
        shapes, want = [tuple(y.shape) for y in got], [tuple(y.shape) for y in expected]
        if shapes != want:
            raise ExportError(
                f"ONNX Runtime's output shapes {shapes} on {where} are not PyTorch's {want}{hint}"
            )
        err, rel = compare(expected, got)
        worst_abs, worst_rel = max(worst_abs, err), max(worst_rel, rel)
        if err > job.tolerance and rel > job.tolerance:
            raise ExportError(
                f"ONNX Runtime's output differs from PyTorch's on {where}: "
                f"max abs error {err:.3g}, relative {rel:.3g} > tolerance {job.tolerance:g}"
            )
    return worst_abs, worst_rel


def _other_batch(inputs: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, ...]:
    """A seeded random batch of ``size`` like ``inputs``; non-float inputs repeat their rows."""
    g = torch.Generator().manual_seed(0)
    out = []
    for x in inputs:
        if x.is_floating_point():
            out.append(torch.randn((size, *x.shape[1:]), generator=g, dtype=x.dtype))
        else:
            out.append(x[torch.arange(size) % x.shape[0]])
    return tuple(out)


def _weight_bytes(model: nn.Module) -> int:
    seen: dict[int, int] = {}
    for t in model.state_dict().values():
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _first_line(exc: BaseException) -> str:
    """The exception's type and its first line: an exporter's errors are often
    only meaningful with the type (``TorchExportError: ...``)."""
    line = first_line(exc)
    return line if line == type(exc).__name__ else f"{type(exc).__name__}: {line}"
