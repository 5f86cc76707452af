"""FlagEmbedding-compatible reranker classes over an exported artifact (or any Backend).

Constructors and compute_score keep FlagEmbedding 1.4.2's names, positional order and defaults. Deliberate changes,
each of which turns a silent surprise into an answer or an error:
- a single pair returns a float (FlagEmbedding 1.4.2 returns a one-element list); [] returns [] (it raises IndexError);
- unknown keyword arguments raise TypeError (FlagEmbedding stores and ignores them), except two names of FlagEmbedding's
  reranker workflow: `passage_max_length` (FlagEmbedding 1.4.2 stores it on the reranker and never reads it; passages
  are limited by max_length: accepted, stored, and a warning, once, when it differs from FlagEmbedding's default 512)
  and `reranker_batch_size` (its evaluation arguments' name for batch_size: taken as batch_size);
- out-of-range cutoff_layers raise ValueError (FlagEmbedding drops them with a warning);
- peft_path is refused: merge the LoRA into the model and export the merged model.
Our own options: provider, max_batch_tokens (None = FlagEmbedding's batching), chunk_size (see batching.py),
non_finite ("raise": a NaN or infinite score raises NonFiniteScoreError naming the pair; "nan": such scores are
returned as NaN) and verify_hashes (True: every artifact file's sha256 is checked against manifest.json at load;
False skips hashing for very large artifacts, sizes and the tokenizer are still checked).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np

from .errors import UnsupportedRequestError
from .kinds import DEFAULT_COMPRESS_LAYERS, build_request, get_kind
from .layout import Instructions, LayoutSettings, plain_tokenizer, resolve_query_max_length
from .limits import Limits
from .layout import check_text
from .scoring import CallPlan, Scorer, apply_non_finite, check_non_finite, parse_pairs, sigmoid
from .spec import DECODER, ENCODER, LAYERWISE, LIGHTWEIGHT, MODEL_CLASSES, Loaded

Devices = str | int | Sequence[str] | Sequence[int] | None
R = TypeVar("R", bound="_Reranker")
_PRELOADED = "_preloaded"  # the keyword from_loaded passes a Loaded bundle through the constructor with
Layers = int | Sequence[int] | None
_DEFAULT_BATCH_SIZE = 128  # FlagEmbedding's, the constructors' default

# FlagEmbedding keyword arguments its rerankers take through **kwargs (see the module docstring)
PASSAGE_MAX_LENGTH_DEFAULT = 512
_warned: set[object] = set()  # passage_max_length values already warned about in this process

_HINTS = {
    "device": "pass devices= (FlagEmbedding also ignores device=)",
    "compress_layer": "only LightWeightFlagLLMReranker takes it (deprecated spelling of compress_layers)",
}


def _check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")


def _workflow_arguments(settings: dict[str, Any], passage_max_length: Any = PASSAGE_MAX_LENGTH_DEFAULT,
                        reranker_batch_size: Any = None) -> dict[str, Any]:
    """The settings FlagEmbedding's reranker workflow passes under its own names, as this runtime's settings."""
    _check_int("passage_max_length", passage_max_length, 1)
    out: dict[str, Any] = {"passage_max_length": passage_max_length}
    if passage_max_length != PASSAGE_MAX_LENGTH_DEFAULT and passage_max_length not in _warned:
        _warned.add(passage_max_length)
        warnings.warn(f"passage_max_length={passage_max_length} has no effect, as in FlagEmbedding 1.4.2, which stores "
                      f"it and never reads it: passages are cut to max_length (now {settings['max_length']}); pass "
                      "max_length to change that", UserWarning, stacklevel=4)
    if reranker_batch_size is not None:
        _check_int("reranker_batch_size", reranker_batch_size, 1)
        if settings["batch_size"] not in (reranker_batch_size, _DEFAULT_BATCH_SIZE):
            raise ValueError(f"batch_size={settings['batch_size']} and reranker_batch_size={reranker_batch_size} "
                             "disagree; reranker_batch_size is FlagEmbedding's evaluation name for batch_size: pass "
                             "one of them")
        out["batch_size"] = reranker_batch_size
    return out


class _Reranker:
    """Shared machinery. Subclasses pin _KIND and spell out FlagEmbedding's constructor signature."""

    _KIND: ClassVar[str]

    def _setup(self, model_name_or_path: str, settings: dict[str, Any], unknown: dict[str, Any]) -> None:
        kind = get_kind(self._KIND)
        loaded: Loaded | None = unknown.pop(_PRELOADED, None)
        flag_extras = {name: unknown.pop(name) for name in ("passage_max_length", "reranker_batch_size")
                       if name in unknown}
        self._reject_unknown(unknown)
        settings.update(_workflow_arguments(settings, **flag_extras))
        if settings.pop("peft_path", None) is not None:
            raise ValueError(
                "peft_path is not supported: merge the LoRA into the base model (PeftModel.merge_and_unload) and "
                "export the merged model"
            )
        for name, minimum, optional in (("batch_size", 1, False), ("max_length", 1, False),
                                        ("query_max_length", 1, True), ("max_batch_tokens", 1, True),
                                        ("chunk_size", 1, False)):  # fmt: skip
            _check_int(name, settings[name], minimum, optional)
        check_non_finite(settings["non_finite"])
        if not isinstance(settings["verify_hashes"], bool):
            raise TypeError(f"verify_hashes must be a bool, got {type(settings['verify_hashes']).__name__}")
        self.model_name_or_path = model_name_or_path
        for name, value in settings.items():
            setattr(self, name, value)
        if loaded is None:
            loaded = self._load(model_name_or_path, devices=settings["devices"], use_fp16=settings["use_fp16"],
                                use_bf16=settings.get("use_bf16", False), provider=settings["provider"])  # fmt: skip
        if loaded.spec.model_class != kind.model_class:
            raise UnsupportedRequestError(
                f"{model_name_or_path!r} holds a {loaded.spec.model_class} model, which {type(self).__name__} "
                f"({kind.model_class}) cannot score; use FlagAutoReranker.from_finetuned or the matching class"
            )
        self._apply_model_defaults(loaded)
        self.spec, self.tokenizer, self.backend = loaded.spec, loaded.tokenizer, loaded.backend
        self._limits = Limits(loaded.spec.max_positions, loaded.max_length)
        instructions = Instructions(self.query_instruction_for_rerank, self.query_instruction_format,
                                    self.passage_instruction_for_rerank, self.passage_instruction_format)  # fmt: skip
        self._scorer = Scorer(loaded.spec, kind, plain_tokenizer(loaded.tokenizer), loaded.backend, instructions)
        plan, _ = self._plan({})  # fail fast on invalid instance settings: lengths, layers, compression
        self.backend.check(plan.request)

    @classmethod
    def from_loaded(cls: type[R], loaded: Loaded, model_name_or_path: str = "<loaded>", **settings: Any) -> R:
        """An instance over a model that is already loaded (load_artifact's bundle, the PyTorch reference's, or any
        Backend), with the constructor's other arguments; nothing is read from disk."""
        if not isinstance(loaded, Loaded):
            raise TypeError(f"from_loaded needs a rerank_runtime.spec.Loaded bundle, got {type(loaded).__name__}")
        return cls(model_name_or_path, **settings, **{_PRELOADED: loaded})

    def _apply_model_defaults(self, loaded: Loaded) -> None:
        kind = get_kind(self._KIND)
        if kind.takes_cutoff and self.cutoff_layers is None:
            self.cutoff_layers = loaded.defaults.get("cutoff_layers")
        if kind.takes_compression:
            if self.compress_ratio is None:
                self.compress_ratio = loaded.defaults.get("compress_ratio", 1)
            if self.compress_layers is None:
                self.compress_layers = list(loaded.defaults.get("compress_layers", DEFAULT_COMPRESS_LAYERS))

    def _reject_unknown(self, unknown: dict[str, Any]) -> None:
        if not unknown:
            return
        accepted = sorted(p for p in inspect.signature(type(self).__init__).parameters if p not in ("self", "kwargs"))
        hints = [f"{name}: {self._hint(name)}" for name in sorted(unknown) if self._hint(name)]
        raise TypeError(
            f"{type(self).__name__} got unexpected keyword argument(s) {sorted(unknown)}"
            + (f" ({'; '.join(hints)})" if hints else "")
            + f"; accepted: {accepted}"
        )

    @staticmethod
    def _hint(name: str) -> str:
        if name in _HINTS:
            return _HINTS[name]
        owners = [c.__name__ for c in _PUBLIC if name in inspect.signature(c.__init__).parameters]
        return f"only {', '.join(owners)} take(s) it" if owners else ""

    def _load(self, model_name_or_path: str, *, devices: Devices, use_fp16: bool, use_bf16: bool,
              provider: str | None) -> Loaded:  # fmt: skip
        """Load the artifact. The PyTorch reference overrides this to serve a checkpoint directly (a checkpoint has
        no recorded hashes, so verify_hashes does not apply to it)."""
        from .artifact import load_artifact

        return load_artifact(model_name_or_path, model_class=self._KIND, devices=devices, use_fp16=use_fp16,
                             use_bf16=use_bf16, provider=provider, verify_hashes=self.verify_hashes)  # fmt: skip

    def _prompt(self, value: str | None) -> str | None:
        """Call value, else instance value, else the class's default prompt; None for the encoder."""
        default = get_kind(self._KIND).default_prompt
        return None if default is None else (default if value is None else value)

    def _plan(self, call: dict[str, Any]) -> tuple[CallPlan, bool]:
        kind = get_kind(self._KIND)
        unsupported = [n for n in ("prompt",) if call.get(n) is not None and kind.default_prompt is None]
        unsupported += [n for n in ("cutoff_layers",) if call.get(n) is not None and not kind.takes_cutoff]
        unsupported += [n for n in ("compress_ratio", "compress_layers", "compress_layer")
                        if call.get(n) is not None and not kind.takes_compression]  # fmt: skip
        if unsupported:
            raise TypeError(
                f"{type(self).__name__}.compute_score does not take {unsupported}: {self._hint(unsupported[0])}"
            )

        def pick(name: str) -> Any:
            value = call.get(name)
            return getattr(self, name, None) if value is None else value

        for name, minimum in (("batch_size", 1), ("max_length", 1), ("query_max_length", 1)):
            _check_int(name, call.get(name), minimum, optional=True)
        max_length = pick("max_length")
        layout = LayoutSettings(
            max_length=max_length,
            query_max_length=resolve_query_max_length(call.get("query_max_length"), self.query_max_length, max_length),
            prompt=self._prompt(pick("prompt")),
        )
        self._limits.check_settings(max_length=layout.max_length, query_max_length=layout.query_max_length)
        check_text("prompt", layout.prompt or "")
        compress_layers = pick("compress_layers")
        if call.get("compress_layer") is not None:
            warnings.warn("compress_layer is deprecated; use compress_layers", DeprecationWarning, stacklevel=4)
            compress_layers = call["compress_layer"]
        request = build_request(
            kind,
            self.spec,
            cutoff_layers=pick("cutoff_layers"),
            compress_ratio=pick("compress_ratio") if kind.takes_compression else 1,
            compress_layers=compress_layers if kind.takes_compression else DEFAULT_COMPRESS_LAYERS,
        )
        normalize = pick("normalize")
        if not isinstance(normalize, bool):
            raise TypeError(f"normalize must be a bool, got {type(normalize).__name__}: {normalize!r}")
        plan = CallPlan(request, layout, pick("batch_size"), self.max_batch_tokens, self.chunk_size, self._limits)
        return plan, normalize

    def _run(self, sentence_pairs: Any, options: dict[str, Any]) -> tuple[np.ndarray, bool]:
        """(float64 scores [n] or [n_exits, n], single-pair input?)."""
        options = {k: v for k, v in options.items() if v is not None}
        plan, normalize = self._plan(options)
        policy = check_non_finite(options.get("non_finite", self.non_finite))
        pairs, single = parse_pairs(sentence_pairs)
        raw = self._scorer.score(pairs, plan)
        scores = apply_non_finite(raw, plan.request.output_names, policy).astype(np.float64)
        if normalize:
            scores = sigmoid(scores)
        return (scores if len(plan.request.exits) > 1 else scores[0]), single

    def compute_score_array(
        self,
        sentence_pairs: Any,
        *,
        batch_size: int | None = None,
        query_max_length: int | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        prompt: str | None = None,
        cutoff_layers: Layers = None,
        compress_ratio: int | None = None,
        compress_layers: Layers = None,
        compress_layer: Layers = None,
        non_finite: str | None = None,
    ) -> np.ndarray:
        """compute_score's scores as a float64 array: [n], or [n_layers, n] with several cutoff layers.

        A single pair gives n = 1. Same arguments as compute_score.
        """
        options = {k: v for k, v in locals().items() if k not in ("self", "sentence_pairs")}
        return self._run(sentence_pairs, options)[0]

    def compute_score(
        self,
        sentence_pairs: Any,
        *,
        batch_size: int | None = None,
        query_max_length: int | None = None,
        max_length: int | None = None,
        normalize: bool | None = None,
        prompt: str | None = None,
        cutoff_layers: Layers = None,
        compress_ratio: int | None = None,
        compress_layers: Layers = None,
        compress_layer: Layers = None,
        non_finite: str | None = None,
    ) -> float | list[float] | list[list[float]]:
        """Score [query, passage] pairs as FlagEmbedding does.

        sentence_pairs: one pair [query, passage] (list or tuple of two str) or a list/tuple of pairs.
        Call arguments fall back to the instance's values. prompt is for the LLM rerankers, cutoff_layers for the
        layerwise and lightweight ones, compress_* for the lightweight one; compress_layer is its deprecated spelling.

        Returns a float for a single pair (deliberate change: FlagEmbedding 1.4.2 returns a one-element list), a list
        of floats for a list of pairs, and with several cutoff layers a list of lists [n_layers][n_pairs] in ascending
        layer order (a single pair then gives one float per layer). [] gives [] (FlagEmbedding raises IndexError).
        Raw scores are the graph's float32 values widened to float; normalize=True applies 1 / (1 + exp(-x)).
        A NaN or infinite score raises NonFiniteScoreError naming the pair, unless non_finite="nan" (call or instance)
        asks for NaN in its place.
        """
        options = {k: v for k, v in locals().items() if k not in ("self", "sentence_pairs")}
        scores, single = self._run(sentence_pairs, options)
        if scores.shape[-1] == 0:
            return []
        if single:
            return float(scores[0]) if scores.ndim == 1 else [float(x) for x in scores[:, 0]]
        return scores.tolist()

    def rank(
        self,
        query: str,
        passages: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        **compute_score_kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Passages sorted by score, best first, as sentence-transformers' CrossEncoder.rank does.

        Returns [{"index": position in passages, "score": float, "document": passage (with return_documents)}], at
        most top_k of them. Ties keep input order. compute_score_kwargs are compute_score's keyword arguments
        (normalize, max_length, cutoff_layers, ...); they must select one score per passage, so several cutoff layers
        raise ValueError. With non_finite="nan", NaN scores sort last.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if isinstance(passages, str) or not isinstance(passages, Sequence):
            raise TypeError(f"passages must be a list of str, got {type(passages).__name__}")
        _check_int("top_k", top_k, 1, optional=True)
        scores = self.compute_score_array([(query, p) for p in passages], **compute_score_kwargs)
        if scores.ndim != 1:
            raise ValueError(
                f"rank needs one score per passage, but the call selects {scores.shape[0]} cutoff layers; "
                "pass a single layer, e.g. cutoff_layers=[28]"
            )
        order = np.argsort(-scores, kind="stable")[:top_k]  # stable: ties keep input order; NaN sorts last
        return [
            {"index": int(i), "score": float(scores[i]), **({"document": passages[i]} if return_documents else {})}
            for i in order
        ]


class FlagReranker(_Reranker):
    """FlagEmbedding's encoder-only cross-encoder (bge-reranker-base/large/v2-m3)."""

    _KIND = ENCODER

    def __init__(self, model_name_or_path: str, use_fp16: bool = False,
                 query_instruction_for_rerank: str | None = None, query_instruction_format: str = "{}{}",
                 passage_instruction_for_rerank: str | None = None, passage_instruction_format: str = "{}{}",
                 trust_remote_code: bool = False, cache_dir: str | None = None, devices: Devices = None,
                 batch_size: int = 128, query_max_length: int | None = None, max_length: int = 512,
                 normalize: bool = False, *, provider: str | None = None, max_batch_tokens: int | None = None,
                 chunk_size: int = 8192, non_finite: str = "raise", verify_hashes: bool = True,
                 **kwargs: Any) -> None:  # fmt: skip
        settings = {k: v for k, v in locals().items() if k not in ("self", "model_name_or_path", "kwargs", "__class__")}
        self._setup(model_name_or_path, settings, kwargs)


class FlagLLMReranker(_Reranker):
    """FlagEmbedding's decoder-only reranker (bge-reranker-v2-gemma)."""

    _KIND = DECODER

    def __init__(self, model_name_or_path: str, peft_path: str | None = None, use_fp16: bool = False,
                 use_bf16: bool = False, query_instruction_for_rerank: str | None = "A: ",
                 query_instruction_format: str = "{}{}", passage_instruction_for_rerank: str | None = "B: ",
                 passage_instruction_format: str = "{}{}", cache_dir: str | None = None,
                 trust_remote_code: bool = False, devices: Devices = None, prompt: str | None = None,
                 batch_size: int = 128, query_max_length: int | None = None, max_length: int = 512,
                 normalize: bool = False, *, provider: str | None = None, max_batch_tokens: int | None = None,
                 chunk_size: int = 8192, non_finite: str = "raise", verify_hashes: bool = True,
                 **kwargs: Any) -> None:  # fmt: skip
        settings = {k: v for k, v in locals().items() if k not in ("self", "model_name_or_path", "kwargs", "__class__")}
        self._setup(model_name_or_path, settings, kwargs)


class LayerWiseFlagLLMReranker(_Reranker):
    """FlagEmbedding's layerwise reranker (bge-reranker-v2-minicpm-layerwise)."""

    _KIND = LAYERWISE

    def __init__(self, model_name_or_path: str, peft_path: str | None = None, use_fp16: bool = False,
                 use_bf16: bool = False, query_instruction_for_rerank: str | None = "A: ",
                 query_instruction_format: str = "{}{}", passage_instruction_for_rerank: str | None = "B: ",
                 passage_instruction_format: str = "{}{}", cache_dir: str | None = None,
                 trust_remote_code: bool = False, devices: Devices = None, cutoff_layers: Layers = None,
                 prompt: str | None = None, batch_size: int = 128, query_max_length: int | None = None,
                 max_length: int = 512, normalize: bool = False, *, provider: str | None = None,
                 max_batch_tokens: int | None = None, chunk_size: int = 8192, non_finite: str = "raise",
                 verify_hashes: bool = True, **kwargs: Any) -> None:  # fmt: skip
        settings = {k: v for k, v in locals().items() if k not in ("self", "model_name_or_path", "kwargs", "__class__")}
        self._setup(model_name_or_path, settings, kwargs)


class LightWeightFlagLLMReranker(_Reranker):
    """FlagEmbedding's lightweight reranker with token compression (bge-reranker-v2.5-gemma2-lightweight).

    compress_layers and compress_ratio default to the artifact's baked values, else [8] and 1 as in FlagEmbedding.
    """

    _KIND = LIGHTWEIGHT

    def __init__(self, model_name_or_path: str, peft_path: str | None = None, use_fp16: bool = False,
                 use_bf16: bool = False, query_instruction_for_rerank: str | None = "A: ",
                 query_instruction_format: str = "{}{}", passage_instruction_for_rerank: str | None = "B: ",
                 passage_instruction_format: str = "{}{}", cache_dir: str | None = None,
                 trust_remote_code: bool = False, devices: Devices = None, cutoff_layers: Layers = None,
                 compress_layers: Layers = None, compress_ratio: int | None = None, prompt: str | None = None,
                 batch_size: int = 128, query_max_length: int | None = None, max_length: int = 512,
                 normalize: bool = False, *, provider: str | None = None, max_batch_tokens: int | None = None,
                 chunk_size: int = 8192, non_finite: str = "raise", verify_hashes: bool = True,
                 **kwargs: Any) -> None:  # fmt: skip
        settings = {k: v for k, v in locals().items() if k not in ("self", "model_name_or_path", "kwargs", "__class__")}
        self._setup(model_name_or_path, settings, kwargs)


_PUBLIC: tuple[type[_Reranker], ...] = (FlagReranker, FlagLLMReranker, LayerWiseFlagLLMReranker,
                                        LightWeightFlagLLMReranker)  # fmt: skip


class FlagAutoReranker:
    """Factory, as FlagEmbedding's: FlagAutoReranker.from_finetuned(path, model_class=None, ...)."""

    _classes: ClassVar[dict[str, type[_Reranker]]] = dict(zip(MODEL_CLASSES, _PUBLIC))

    def __init__(self) -> None:
        raise EnvironmentError(
            "FlagAutoReranker is a factory: use FlagAutoReranker.from_finetuned(model_name_or_path, model_class=...)"
        )

    @classmethod
    def from_finetuned(cls, model_name_or_path: str, model_class: Any = None, use_fp16: bool = False,
                       trust_remote_code: bool | None = None, **kwargs: Any) -> _Reranker:  # fmt: skip
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
    def from_loaded(cls, loaded: Loaded, model_name_or_path: str = "<loaded>", **settings: Any) -> _Reranker:
        """The class for loaded.spec.model_class, over an already loaded model (see _Reranker.from_loaded)."""
        if not isinstance(loaded, Loaded):
            raise TypeError(f"from_loaded needs a rerank_runtime.spec.Loaded bundle, got {type(loaded).__name__}")
        return cls._classes[loaded.spec.model_class].from_loaded(loaded, model_name_or_path, **settings)

    @classmethod
    def _detect_model_class(cls, model_name_or_path: str) -> str:
        """The artifact's model class (the PyTorch reference overrides this for checkpoints)."""
        from .artifact import detect_model_class

        return detect_model_class(model_name_or_path)
