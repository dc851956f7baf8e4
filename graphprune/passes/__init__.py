"""Built-in passes, one per module, in pipeline order."""

from .apply import ApplyPass
from .channels import ChannelAnalysisPass
from .fold import FoldPass
from .groups import GroupPass
from .mask import MaskPass
from .measure import MeasurePass
from .rewrite import RewritePass
from .score import ScorePass
from .select import SelectPass
from .shapes import ShapePass
from .structure import StructurePass
from .trace import FRONTENDS, TracePass, register_frontend
from .verify import Verification, VerifyPass


def __getattr__(name: str):
    # The export and latency passes load ONNX and ONNX Runtime: only when asked for.
    if name == "ExportPass":
        from .export import ExportPass

        return ExportPass
    if name == "LatencyPass":
        from .latency import LatencyPass

        return LatencyPass
    raise AttributeError(f"module 'graphprune.passes' has no attribute {name!r}")


def default_passes() -> list:
    return [
        TracePass(),
        ShapePass(),
        ChannelAnalysisPass(),
        StructurePass(),
        GroupPass(),
        ScorePass(),
        SelectPass(),
        RewritePass(),
        ApplyPass(),
        MaskPass(),
        FoldPass(),
        VerifyPass(),
        MeasurePass(),
    ]


__all__ = [
    "ApplyPass", "ChannelAnalysisPass", "FRONTENDS", "FoldPass", "GroupPass", "MaskPass", "MeasurePass", "RewritePass",
    "ScorePass", "SelectPass", "ShapePass", "StructurePass", "TracePass", "Verification", "VerifyPass",
    "default_passes", "register_frontend", "ExportPass", "LatencyPass",
]
