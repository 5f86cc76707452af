"""What the four FlagEmbedding-compatible classes share (rerankers.py spells out their signatures): set-up from a
spec.Loaded bundle (an export's, the PyTorch reference's, or any spec.Front), call planning, compute_score, rank and
token_lengths. The host side of a call is scoring.Scorer's; arguments are checked in arguments.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from .arguments import check_call, check_int, check_settings
from .errors import UnsupportedRequestError
from .kinds import DEFAULT_COMPRESS_LAYERS, build_request, get_kind
from .layout import Instructions, LayoutSettings, check_text, plain_tokenizer, resolve_query_max_length
from .limits import Limits, default_max_length
from .hints import wrong_kind
from .progress import open_tracker
from .scoring import CallPlan, Scorer, apply_non_finite, check_non_finite, parse_pairs, sigmoid
from .spec import Loaded

Devices = str | int | Sequence[str] | Sequence[int] | None
R = TypeVar("R", bound="Reranker")
Layers = int | Sequence[int] | None
_UNBOUNDED = 1 << 30  # a length limit nothing reaches (token_lengths(truncate=False))


class Reranker:
    """The machinery of FlagReranker, FlagLLMReranker, LayerWiseFlagLLMReranker and LightWeightFlagLLMReranker (its
    direct subclasses, which pin _KIND and spell out FlagEmbedding's constructor signature). Build one with a class's
    constructor (an export directory), FlagAutoReranker.from_finetuned, or from_loaded (a loaded model)."""

    _KIND: ClassVar[str]
    # the constructor's settings, kept as instance attributes (as FlagEmbedding keeps them); _setup sets them
    model_name_or_path: str
    query_instruction_for_rerank: str | None
    query_instruction_format: str
    passage_instruction_for_rerank: str | None
    passage_instruction_format: str
    batch_size: int
    max_length: int
    query_max_length: int | None
    normalize: bool
    show_progress_bar: Any  # None, a bool, or a tqdm-like callable (progress.py)
    max_batch_tokens: int | None
    chunk_size: int
    non_finite: str
    verify_hashes: bool
    cutoff_layers: Layers  # the layer classes
    compress_ratio: int | None  # the lightweight class
    compress_layers: Layers

    if TYPE_CHECKING:  # the subclasses spell out FlagEmbedding's signatures
        def __init__(self, model_name_or_path: str, *args: Any, **kwargs: Any) -> None: ...

    def _setup(self, model_name_or_path: str, settings: dict[str, Any], unknown: dict[str, Any]) -> None:
        kind = get_kind(self._KIND)
        loaded: Loaded | None = settings.pop("loaded")
        if loaded is not None and not isinstance(loaded, Loaded):
            raise TypeError(f"loaded must be a rerank_runtime.spec.Loaded bundle, got {type(loaded).__name__}")
        check_settings(type(self), Reranker.__subclasses__(), settings, unknown)
        self.model_name_or_path = model_name_or_path
        for name, value in settings.items():
            setattr(self, name, value)
        if loaded is None:
            loaded = self._load(model_name_or_path, devices=settings["devices"], use_fp16=settings["use_fp16"],
                                use_bf16=settings.get("use_bf16"), provider=settings["provider"])
        if loaded.spec.model_class != kind.model_class:
            raise UnsupportedRequestError(wrong_kind(model_name_or_path, loaded.spec.model_class, kind.model_class))
        self._apply_model_defaults(loaded)
        self.spec, self.tokenizer, self.front = loaded.spec, loaded.tokenizer, loaded.front
        self._limits = Limits(loaded.spec.max_positions, loaded.max_length)
        instructions = Instructions(self.query_instruction_for_rerank, self.query_instruction_format,
                                    self.passage_instruction_for_rerank, self.passage_instruction_format)
        self._scorer = Scorer(loaded.spec, kind, plain_tokenizer(loaded.tokenizer), loaded.front, instructions)
        plan, _ = self._plan({})  # fail fast on invalid instance settings: lengths, layers, compression
        self.front.check(plan.request)

    @classmethod
    def from_loaded(cls: type[R], loaded: Loaded, model_name_or_path: str = "<loaded>", **settings: Any) -> R:
        """An instance over a model that is already loaded (load_artifact's bundle, the PyTorch reference's, or any
        spec.Front), with the constructor's other arguments; nothing is read from disk."""
        if not isinstance(loaded, Loaded):
            raise TypeError(f"from_loaded needs a rerank_runtime.spec.Loaded bundle, got {type(loaded).__name__}")
        return cls(model_name_or_path, loaded=loaded, **settings)

    def _apply_model_defaults(self, loaded: Loaded) -> None:
        kind = get_kind(self._KIND)
        if self.max_length is None:
            self.max_length = default_max_length(loaded.max_length, self.model_name_or_path)
        if kind.takes_cutoff and self.cutoff_layers is None:
            self.cutoff_layers = loaded.defaults.get("cutoff_layers")
        if kind.takes_compression:
            if self.compress_ratio is None:
                self.compress_ratio = loaded.defaults.get("compress_ratio", 1)
            if self.compress_layers is None:
                self.compress_layers = list(loaded.defaults.get("compress_layers", DEFAULT_COMPRESS_LAYERS))

    def _load(self, model_name_or_path: str, *, devices: Devices, use_fp16: bool | None, use_bf16: bool | None,
              provider: str | None) -> Loaded:
        """Load the export directory (when the constructor was given no `loaded` bundle)."""
        from .artifact import load_artifact

        return load_artifact(model_name_or_path, model_class=self._KIND, devices=devices, use_fp16=use_fp16,
                             use_bf16=use_bf16, provider=provider, verify_hashes=self.verify_hashes)

    def _prompt(self, value: str | None) -> str | None:
        """Call value, else instance value, else the class's default prompt; None for the encoder."""
        default = get_kind(self._KIND).default_prompt
        return None if default is None else (default if value is None else value)

    def _plan(self, call: dict[str, Any]) -> tuple[CallPlan, bool]:
        kind = get_kind(self._KIND)
        check_call(type(self), Reranker.__subclasses__(), kind, call)

        def pick(name: str) -> Any:
            value = call.get(name)
            return getattr(self, name, None) if value is None else value

        check_int("batch_size", call.get("batch_size"), 1, optional=True)
        layout = self._layout(call)
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

    def _layout(self, call: dict[str, Any], truncate: bool = True) -> LayoutSettings:
        """The call's token layout settings (call value, else instance value, else default), checked against the
        limits; truncate=False: nothing is cut (and nothing checked), for counting a pair's full length."""
        for name in ("max_length", "query_max_length"):
            check_int(name, call.get(name), 1, optional=True)
        prompt = self._prompt(call["prompt"] if call.get("prompt") is not None else getattr(self, "prompt", None))
        check_text("prompt", prompt or "")
        if not truncate:
            return LayoutSettings(max_length=_UNBOUNDED, query_max_length=_UNBOUNDED, prompt=prompt)
        max_length = call.get("max_length") or self.max_length
        query_max_length = resolve_query_max_length(call.get("query_max_length"), self.query_max_length, max_length)
        self._limits.check_settings(max_length=max_length, query_max_length=query_max_length)
        return LayoutSettings(max_length=max_length, query_max_length=query_max_length, prompt=prompt)

    def token_lengths(self, sentence_pairs: Any, *, max_length: int | None = None, query_max_length: int | None = None,
                      prompt: str | None = None, truncate: bool = True) -> np.ndarray:
        """int64 [n]: how many token ids the model sees for each pair under these compute_score options, laid out
        exactly as compute_score lays them out (instructions, special tokens, the LLM prompt; not the padding).

        truncate=False counts each pair before anything is cut (max_length and query_max_length unbounded, the limits
        not checked): a pair is cut by compute_score exactly when its count here is larger than with truncate=True.
        """
        pairs, _ = parse_pairs(sentence_pairs)
        self._plan({"prompt": prompt})  # the arguments a class does not take are refused as compute_score does
        call = {"max_length": max_length, "query_max_length": query_max_length, "prompt": prompt}
        chunk = self._scorer.encode(pairs, self._layout(call, truncate))
        return np.array([len(row) for row in chunk.ids], dtype=np.int64)

    def _run(self, sentence_pairs: Any, options: dict[str, Any]) -> tuple[np.ndarray, bool]:
        """(float64 scores [n] or [n_exits, n], single-pair input?)."""
        options = {k: v for k, v in options.items() if v is not None}
        plan, normalize = self._plan(options)
        policy = check_non_finite(options.get("non_finite", self.non_finite))
        pairs, single = parse_pairs(sentence_pairs)
        tracker = open_tracker(options.get("show_progress_bar", self.show_progress_bar), len(pairs), plan.batch_size)
        try:
            raw = self._scorer.score(pairs, plan, None if tracker is None else tracker.update)
        finally:
            if tracker is not None:
                tracker.close()
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
        show_progress_bar: Any = None,
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
        show_progress_bar: Any = None,
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
        asks for NaN in its place. show_progress_bar (call or instance): None shows a bar on stderr when it is a
        terminal and the call spans a batch or more, True/False force it, a tqdm-like callable is used instead
        (rerank_runtime.progress).
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
        check_int("top_k", top_k, 1, optional=True)
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
