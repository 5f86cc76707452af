"""rerank_runtime: FlagEmbedding's reranker API over ONNX Runtime and TensorRT. Never imports torch or transformers.

    from rerank_runtime import FlagLLMReranker          # was: from FlagEmbedding import FlagLLMReranker
    reranker = FlagLLMReranker("exports/bge-reranker-v2-gemma-fp16", devices="cuda:0")
    reranker.compute_score([["what is panda?", "The giant panda is a bear species endemic to China."]])
"""

from .errors import (
    ArtifactError,
    EngineError,
    ExportError,
    InvalidTextError,
    LengthLimitError,
    ManifestMismatchError,
    MissingDependencyError,
    ModelNotFoundError,
    NonFiniteScoreError,
    ParityError,
    ProviderUnavailableError,
    RerankError,
    UnknownFamilyError,
    UnsupportedRequestError,
)
from .rerankers import (
    FlagAutoReranker,
    FlagLLMReranker,
    FlagReranker,
    LayerWiseFlagLLMReranker,
    LightWeightFlagLLMReranker,
)

__version__ = "0.1.0"  # the package's one version source: pyproject.toml reads it

__all__ = [
    "FlagAutoReranker",
    "FlagReranker",
    "FlagLLMReranker",
    "LayerWiseFlagLLMReranker",
    "LightWeightFlagLLMReranker",
    "RerankError",
    "ArtifactError",
    "EngineError",
    "ExportError",
    "InvalidTextError",
    "LengthLimitError",
    "ManifestMismatchError",
    "MissingDependencyError",
    "ModelNotFoundError",
    "NonFiniteScoreError",
    "ParityError",
    "ProviderUnavailableError",
    "UnknownFamilyError",
    "UnsupportedRequestError",
]
