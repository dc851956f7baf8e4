"""graphprune: a channel-pruning compiler for PyTorch CNNs.

Trace a model with torch.fx, find the channels that are coupled, choose the
channels to drop, and rewrite the graph into a physically smaller model that
computes exactly what the masked model computes.
"""

from .api import PruneResult, Report, prune
from .config import PruneConfig
from .criteria import CRITERIA, LayerView, register_criterion
from .errors import (
    ConfigError,
    ExportError,
    GraphpruneError,
    LoadError,
    ModelError,
    PipelineError,
    TraceError,
    VerificationError,
)
from .pipeline import CompileState, Pass, Pipeline
from .plan import Group, PruningPlan
from .rules import RULES, register_rule
from .serialize import load, save
from .training import reconstruct

__version__ = "0.1.0"

# ONNX and ONNX Runtime load only when an export or a timing asks for them
# (about a second of every import otherwise).
_LAZY = {"OnnxExport": "onnx_export", "export_onnx": "onnx_export", "Latency": "onnx_latency",
         "compare_latency": "onnx_latency", "measure_latency": "onnx_latency"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'graphprune' has no attribute {name!r}")

__all__ = [
    "CRITERIA", "CompileState", "ConfigError", "GraphpruneError", "Group", "LayerView", "Pass",
    "Pipeline", "PipelineError", "PruneConfig", "PruneResult", "PruningPlan", "RULES", "Report",
    "ExportError", "Latency", "LoadError", "ModelError", "OnnxExport", "TraceError", "compare_latency", "export_onnx",
    "measure_latency", "VerificationError", "load", "prune", "reconstruct", "register_criterion", "register_rule", "save",
]
