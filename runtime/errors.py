"""Typed errors. Every one says what was expected, what was found, and what to do."""

from __future__ import annotations


class RerankError(Exception):
    """Base class of every error this package raises on purpose."""


class MissingDependencyError(RerankError, ImportError):
    """An optional dependency is not installed."""


class UnknownFamilyError(RerankError, ValueError):
    """A checkpoint or name that no registered model family or reranker kind matches."""


class ModelNotFoundError(RerankError, FileNotFoundError):
    """A model directory, hub id or artifact that is not on this machine."""


class ArtifactError(RerankError):
    """An export directory that is missing files, or whose files are corrupt."""


class ManifestMismatchError(ArtifactError):
    """manifest.json and the graph beside it disagree."""


class UnsupportedRequestError(RerankError, ValueError):
    """Arguments that the artifact cannot serve (a head it lacks, other compression settings, ...)."""


class LengthLimitError(UnsupportedRequestError):
    """A max_length / query_max_length beyond the export's max_length or the model's position table, or a pair whose
    token sequence is longer than the position table. `index` is the pair's position in the input, when one is."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


class InvalidTextError(RerankError, ValueError):
    """A query or passage that is not valid Unicode text (a lone surrogate), found before any pair is scored.
    `index` is the pair's position in the input."""

    def __init__(self, message: str, index: int | None):
        super().__init__(message)
        self.index = index


class ProviderUnavailableError(RerankError):
    """An execution provider or device that is not available, or that ONNX Runtime fell back from."""


class ParityError(RerankError):
    """Scores that differ from the reference by more than the tolerance."""

    def __init__(self, message: str, diffs: dict[str, float] | None = None, tolerance: float | None = None):
        super().__init__(message)
        self.diffs = diffs or {}
        self.tolerance = tolerance


class NonFiniteScoreError(RerankError, ArithmeticError):
    """A score that came out NaN or infinite (fp16 overflow is the usual cause). `index` is the pair's position in the
    caller's input, `output` the graph output (exit) it came from, `value` the raw score."""

    def __init__(self, message: str, index: int, value: float, output: str):
        super().__init__(message)
        self.index = index
        self.value = value
        self.output = output


class EngineError(RerankError):
    """A TensorRT engine that cannot be built or loaded here."""


class ExportError(RerankError, ValueError):
    """Options of the exporter, the engine builder or the built-in model generator (rerank_export.testing) that make no
    sense, or an output (export directory or engine file) that is in the way."""
