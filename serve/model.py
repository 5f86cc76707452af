"""The served model: a runtime reranker plus what the routes need (token counts, exits, /info).

Scores always come from the runtime's own compute_score_array, called with non_finite="nan" so that one bad pair in
a merged batch cannot fail the other requests in it; the route turns a request's NaN into its own 500.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .schemas import RankRequest, ServeError, invalid
from .settings import ServeSettings

GroupKey = tuple[int, "int | None"]  # (max_length, cutoff_layer): the options that change scores


@dataclass(eq=False)
class Job:
    """One request's pairs on their way through the batcher. tokens: the ids the model sees per pair."""

    key: GroupKey
    pairs: list[tuple[str, str]]
    tokens: np.ndarray
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.sum())


class Model:
    """What every route scores with. `reranker` is any runtime (or reference) reranker instance."""

    def __init__(self, reranker: Any, model_name: str, info: dict[str, Any] | None = None) -> None:
        self.reranker = reranker
        self.model_name = model_name
        self.max_length: int = reranker.max_length
        self.concurrency: int = reranker.front.concurrency
        self.cutoff_layers = self._servable_layers()
        self.info = {"model_name": model_name, "model_class": reranker.spec.model_class, "max_length": self.max_length,
                     "cutoff_layers": self.cutoff_layers, "default_cutoff_layer": self._default_layer(),
                     "concurrency": self.concurrency, **(info or {})}

    def _servable_layers(self) -> list[int]:
        """The layers a request may pick with cutoff_layer: those whose single-layer call this export serves."""
        layers = range(1, (self.reranker.spec.num_layers or 0) + 1)
        if not _takes_cutoff(self.reranker):
            return []
        ok = []
        for layer in layers:
            try:
                self.reranker.compute_score_array([], cutoff_layers=[layer])  # checks the request, scores nothing
            except (ValueError, TypeError):
                continue
            ok.append(layer)
        return ok

    def _default_layer(self) -> int | None:
        if not _takes_cutoff(self.reranker):
            return None
        default = self.reranker.cutoff_layers
        if default is None:
            return self.reranker.spec.num_layers
        return max(default) if isinstance(default, (list, tuple)) else int(default)

    def prepare(self, request: RankRequest) -> Job:
        """Check the request against the model and count its tokens (tokenises: run it off the event loop)."""
        layer = request.cutoff_layer
        if layer is not None and layer not in self.cutoff_layers:
            raise invalid(f"field `cutoff_layer`: {layer} is not servable by this export; "
                          + (f"pick one of {self.cutoff_layers}" if self.cutoff_layers else
                             "this model has a single score head, leave the field out"))
        max_length = min(request.max_length or self.max_length, self.max_length)
        pairs = [(request.query, doc) for doc in request.documents]
        tokens = self.reranker.token_lengths(pairs, max_length=max_length)
        if not request.truncate:
            full = self.reranker.token_lengths(pairs, truncate=False)
            cut = np.flatnonzero(full > tokens)
            if len(cut):
                i = int(cut[0])
                raise ServeError(413, "validation", f"texts[{i}] with the query is {int(full[i])} tokens, over the "
                                 f"model's max_length of {max_length}; send \"truncate\": true to cut it as "
                                 "FlagEmbedding does, or shorten it")
        return Job(key=(max_length, layer), pairs=pairs, tokens=tokens)

    def score(self, key: GroupKey, pairs: list[tuple[str, str]]) -> np.ndarray:
        """Raw float64 scores [n] (NaN where the model gave NaN or inf), on the calling (worker) thread."""
        max_length, layer = key
        options: dict[str, Any] = {"max_length": max_length, "non_finite": "nan"}
        if layer is not None:
            options["cutoff_layers"] = [layer]
        scores = self.reranker.compute_score_array(pairs, **options)
        return scores[-1] if scores.ndim == 2 else scores  # several default exits: the deepest is served

    def warm_up(self) -> None:
        self.score((self.max_length, None), [("warm-up query", "a warm-up passage")])


def load(settings: ServeSettings) -> Model:
    """The export directory as a Model, with the server's token budget and the export's max_length."""
    from rerank_runtime import FlagAutoReranker
    from rerank_runtime.front import backends_of
    from rerank_runtime.manifest import Manifest
    from rerank_runtime.onnx_backend import OnnxBackend

    manifest = Manifest.read(settings.export_dir)
    devices = settings.devices.split(",") if settings.devices and "," in settings.devices else settings.devices
    reranker = FlagAutoReranker.from_finetuned(
        settings.export_dir, devices=devices, provider=settings.provider,
        max_batch_tokens=settings.max_batch_tokens, max_length=manifest.max_length,
        show_progress_bar=False,  # a server's stderr is its log: no progress bar, even on a terminal
    )
    backends = backends_of(reranker.front.backend)  # load_artifact's front is a GraphFront
    placements = [b.placement for b in backends if isinstance(b, OnnxBackend)]  # what the runtime resolved
    info = {"family": manifest.family, "precision": manifest.precision,
            "provider": placements[0].provider if placements else settings.provider,
            "devices": [p.device for p in placements] or settings.devices, "exits": [list(e) for e in manifest.exits],
            "compress_ratio": manifest.compress_ratio, "compress_layers": list(manifest.compress_layers),
            "score": "raw logit from the graph; routes apply a float64 sigmoid unless raw scores are asked for",
            "exported_with": dict(manifest.versions), "verification": dict(manifest.verification),
            "engine": None if manifest.tensorrt is None else manifest.tensorrt.build_settings(),
            "versions": _versions()}
    return Model(reranker, settings.model_name or manifest.model_name, info)


def _versions() -> dict[str, str]:
    from rerank_runtime._deps import installed_versions

    return installed_versions(("bge-rerank-fast", "onnxruntime", "onnxruntime-gpu", "tokenizers", "numpy",
                               "starlette", "uvicorn", "ray"), python=True)


def _takes_cutoff(reranker: Any) -> bool:
    from rerank_runtime.kinds import get_kind

    return get_kind(reranker.spec.model_class).takes_cutoff
