"""FlagEmbedding-compatible reranker classes over an exported artifact (or any loaded model: Reranker.from_loaded).

Constructors and compute_score keep FlagEmbedding 1.4.2's names and positional order, and its defaults in effect:
`use_fp16`, `use_bf16` and `max_length` default to None, meaning "not given", so that the two cases an export cannot
honour are said once instead of silently:
- use_fp16 / use_bf16: an export's precision is fixed when it is made. A flag asking for a precision the export does
  not have, or an explicit False for the one it has, gives one warning naming the precision served and the
  `rerank-export` command for the other (FlagEmbedding itself ignores use_fp16 on the CPU);
- max_length: FlagEmbedding's 512, or the export's own max_length when it was made with a smaller --max-length (one
  warning says so; an explicit value beyond the export's raises LengthLimitError).
Deliberate changes, each of which turns a silent surprise into an answer or an error:
- a single pair returns a float (FlagEmbedding 1.4.2 returns a one-element list); [] returns [] (it raises IndexError);
- unknown keyword arguments raise TypeError (FlagEmbedding stores and ignores them), except `passage_max_length` and
  `reranker_batch_size`, names of FlagEmbedding's reranker workflow (see arguments.py);
- out-of-range cutoff_layers raise ValueError (FlagEmbedding drops them with a warning);
- peft_path is refused: merge the LoRA into the model and export the merged model.
Our own options: show_progress_bar (sentence-transformers' name; see progress.py), provider, max_batch_tokens
(None = FlagEmbedding's batching), chunk_size (see batching.py), non_finite ("raise": a NaN or infinite score raises
NonFiniteScoreError naming the pair; "nan": such scores are returned as NaN), verify_hashes (True: every artifact
file's sha256 is checked against manifest.json at load; False skips hashing for very large artifacts, sizes and the
tokenizer are still checked) and loaded (a spec.Loaded bundle to serve instead of loading model_name_or_path: what
from_loaded passes, and how the PyTorch reference serves a checkpoint).
"""

from __future__ import annotations

from typing import Any, ClassVar

from .reranker_base import Devices, Layers, Reranker

__all__ = ["FlagAutoReranker", "FlagLLMReranker", "FlagReranker", "LayerWiseFlagLLMReranker",
           "LightWeightFlagLLMReranker", "Reranker"]
from .spec import DECODER, ENCODER, LAYERWISE, LIGHTWEIGHT, MODEL_CLASSES, Loaded


class FlagReranker(Reranker):
    """FlagEmbedding's encoder-only cross-encoder (bge-reranker-base/large/v2-m3)."""

    _KIND = ENCODER

    def __init__(self, model_name_or_path: str, use_fp16: bool | None = None,
                 query_instruction_for_rerank: str | None = None, query_instruction_format: str = "{}{}",
                 passage_instruction_for_rerank: str | None = None, passage_instruction_format: str = "{}{}",
                 trust_remote_code: bool = False, cache_dir: str | None = None, devices: Devices = None,
                 batch_size: int = 128, query_max_length: int | None = None, max_length: int | None = None,
                 normalize: bool = False, *, provider: str | None = None, max_batch_tokens: int | None = None,
                 chunk_size: int = 8192, non_finite: str = "raise", verify_hashes: bool = True,
                 show_progress_bar: Any = None, loaded: Loaded | None = None, **kwargs: Any) -> None:
        settings = {k: v for k, v in locals().items() if k not in ("self", "model_name_or_path", "kwargs", "__class__")}
        self._setup(model_name_or_path, settings, kwargs)


class FlagLLMReranker(Reranker):
    """FlagEmbedding's decoder-only reranker (bge-reranker-v2-gemma)."""

    _KIND = DECODER

    def __init__(self, model_name_or_path: str, peft_path: str | None = None, use_fp16: bool | None = None,
                 use_bf16: bool | None = None, query_instruction_for_rerank: str | None = "A: ",
                 query_instruction_format: str = "{}{}", passage_instruction_for_rerank: str | None = "B: ",
                 passage_instruction_format: str = "{}{}", cache_dir: str | None = None,
                 trust_remote_code: bool = False, devices: Devices = None, prompt: str | None = None,
                 batch_size: int = 128, query_max_length: int | None = None, max_length: int | None = None,
                 normalize: bool = False, *, provider: str | None = None, max_batch_tokens: int | None = None,
                 chunk_size: int = 8192, non_finite: str = "raise", verify_hashes: bool = True,
                 show_progress_bar: Any = None, loaded: Loaded | None = None, **kwargs: Any) -> None:
        settings = {k: v for k, v in locals().items() if k not in ("self", "model_name_or_path", "kwargs", "__class__")}
        self._setup(model_name_or_path, settings, kwargs)


class LayerWiseFlagLLMReranker(Reranker):
    """FlagEmbedding's layerwise reranker (bge-reranker-v2-minicpm-layerwise)."""

    _KIND = LAYERWISE

    def __init__(self, model_name_or_path: str, peft_path: str | None = None, use_fp16: bool | None = None,
                 use_bf16: bool | None = None, query_instruction_for_rerank: str | None = "A: ",
                 query_instruction_format: str = "{}{}", passage_instruction_for_rerank: str | None = "B: ",
                 passage_instruction_format: str = "{}{}", cache_dir: str | None = None,
                 trust_remote_code: bool = False, devices: Devices = None, cutoff_layers: Layers = None,
                 prompt: str | None = None, batch_size: int = 128, query_max_length: int | None = None,
                 max_length: int | None = None, normalize: bool = False, *, provider: str | None = None,
                 max_batch_tokens: int | None = None, chunk_size: int = 8192, non_finite: str = "raise",
                 verify_hashes: bool = True, show_progress_bar: Any = None, loaded: Loaded | None = None,
                 **kwargs: Any) -> None:
        settings = {k: v for k, v in locals().items() if k not in ("self", "model_name_or_path", "kwargs", "__class__")}
        self._setup(model_name_or_path, settings, kwargs)


class LightWeightFlagLLMReranker(Reranker):
    """FlagEmbedding's lightweight reranker with token compression (bge-reranker-v2.5-gemma2-lightweight).

    compress_layers and compress_ratio default to the artifact's baked values, else [8] and 1 as in FlagEmbedding.
    """

    _KIND = LIGHTWEIGHT

    def __init__(self, model_name_or_path: str, peft_path: str | None = None, use_fp16: bool | None = None,
                 use_bf16: bool | None = None, query_instruction_for_rerank: str | None = "A: ",
                 query_instruction_format: str = "{}{}", passage_instruction_for_rerank: str | None = "B: ",
                 passage_instruction_format: str = "{}{}", cache_dir: str | None = None,
                 trust_remote_code: bool = False, devices: Devices = None, cutoff_layers: Layers = None,
                 compress_layers: Layers = None, compress_ratio: int | None = None, prompt: str | None = None,
                 batch_size: int = 128, query_max_length: int | None = None, max_length: int | None = None,
                 normalize: bool = False, *, provider: str | None = None, max_batch_tokens: int | None = None,
                 chunk_size: int = 8192, non_finite: str = "raise", verify_hashes: bool = True,
                 show_progress_bar: Any = None, loaded: Loaded | None = None, **kwargs: Any) -> None:
        settings = {k: v for k, v in locals().items() if k not in ("self", "model_name_or_path", "kwargs", "__class__")}
        self._setup(model_name_or_path, settings, kwargs)


_PUBLIC: tuple[type[Reranker], ...] = (FlagReranker, FlagLLMReranker, LayerWiseFlagLLMReranker,
                                        LightWeightFlagLLMReranker)


class FlagAutoReranker:
    """Factory, as FlagEmbedding's: FlagAutoReranker.from_finetuned(path, model_class=None, ...)."""

    _classes: ClassVar[dict[str, type[Reranker]]] = dict(zip(MODEL_CLASSES, _PUBLIC))

    def __init__(self) -> None:
        raise EnvironmentError(
            "FlagAutoReranker is a factory: use FlagAutoReranker.from_finetuned(model_name_or_path, model_class=...)"
        )

    @classmethod
    def from_finetuned(cls, model_name_or_path: str, model_class: Any = None, use_fp16: bool | None = None,
                       trust_remote_code: bool | None = None, **kwargs: Any) -> Reranker:
        """model_class: one of the four RerankerModelClass strings (or the enum); None detects it from the path."""
        if model_class is None:
            name = cls._detect_model_class(model_name_or_path)
        else:
            name = getattr(model_class, "value", model_class)
        if name not in cls._classes:
            raise ValueError(f"model_class must be one of {MODEL_CLASSES}, got {model_class!r}")
        target = cls._classes[name]
        return target(model_name_or_path, use_fp16=use_fp16, trust_remote_code=bool(trust_remote_code), **kwargs)

    @classmethod
    def from_loaded(cls, loaded: Loaded, model_name_or_path: str = "<loaded>", **settings: Any) -> Reranker:
        """The class for loaded.spec.model_class, over an already loaded model (see Reranker.from_loaded)."""
        if not isinstance(loaded, Loaded):
            raise TypeError(f"from_loaded needs a rerank_runtime.spec.Loaded bundle, got {type(loaded).__name__}")
        return cls._classes[loaded.spec.model_class].from_loaded(loaded, model_name_or_path, **settings)

    @classmethod
    def _detect_model_class(cls, model_name_or_path: str) -> str:
        """The artifact's model class (the PyTorch reference overrides this for checkpoints)."""
        from .artifact import detect_model_class

        return detect_model_class(model_name_or_path)
