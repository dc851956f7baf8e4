"""Errors graphprune raises. Each says what went wrong and what to do."""

from __future__ import annotations

import re


class GraphpruneError(Exception):
    """Base class of every error graphprune raises on purpose."""


class ConfigError(GraphpruneError, ValueError):
    """An option is out of range or names something that does not exist."""


class ModelError(GraphpruneError, ValueError):
    """The model cannot be pruned as given: a parameter or buffer holds NaN or infinity."""


class TraceError(GraphpruneError):
    """The model could not be traced into a graph."""


class VerificationError(GraphpruneError):
    """The compact model does not compute what the masked model computes."""

    def __init__(self, message: str, verification: object = None):
        super().__init__(message)
        self.verification = verification


class PipelineError(GraphpruneError):
    """A pass ran before what it needs was there (a custom pipeline out of order)."""


class LoadError(GraphpruneError):
    """A saved model cannot be loaded: missing, corrupted, edited or for another architecture."""


class ExportError(GraphpruneError):
    """The model could not be exported to ONNX, or ONNX Runtime disagrees with PyTorch."""


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (terminal colour
    codes removed), or its type's name where the message is empty: what an
    error of graphprune's quotes from the error that caused it."""
    text = _ANSI.sub("", str(exc)).strip()
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
