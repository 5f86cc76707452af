"""What differs between FlagEmbedding's four reranker classes, and how their arguments become a GraphRequest.

Everything here follows FlagEmbedding 1.4.2 as docs/flagembedding-behaviour.md states it (Decoder token layout,
Layerwise cutoff layers, Lightweight exits, Token compression, FlagAutoReranker), with the deliberate changes marked in
comments.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .compression import effective
from .errors import ArtifactError, UnknownFamilyError
from .spec import DECODER, ENCODER, LAYERWISE, LIGHTWEIGHT, MODEL_CLASSES, GraphRequest, ModelSpec

DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query "
    "by providing a prediction of either 'Yes' or 'No'."
)
LIGHTWEIGHT_PROMPT = "Predict whether passage B contains an answer to query A."
DEFAULT_COMPRESS_LAYERS = (8,)

BosRule = Literal["template", "unless_pad", "always"]


@dataclass(frozen=True)
class Kind:
    """One FlagEmbedding reranker class, as far as the host side is concerned."""

    model_class: str
    class_name: str
    query_instruction: str | None
    passage_instruction: str | None
    default_prompt: str | None
    bos: BosRule  # template: the encoder's pair template; unless_pad: BOS when bos != pad; always: BOS always
    pad_multiple: int | None
    force_right_padding: bool
    takes_cutoff: bool
    takes_compression: bool


KINDS: dict[str, Kind] = {
    ENCODER: Kind(ENCODER, "FlagReranker", None, None, None, "template", None, False, False, False),
    DECODER: Kind(DECODER, "FlagLLMReranker", "A: ", "B: ", DEFAULT_PROMPT, "unless_pad", 8, False, False, False),
    LAYERWISE: Kind(
        LAYERWISE, "LayerWiseFlagLLMReranker", "A: ", "B: ", DEFAULT_PROMPT, "always", 8, False, True, False
    ),
    LIGHTWEIGHT: Kind(
        LIGHTWEIGHT, "LightWeightFlagLLMReranker", "A: ", "B: ", LIGHTWEIGHT_PROMPT, "always", 8, True, True, True
    ),
}

# FlagEmbedding 1.4.2's AUTO_RERANKER_MAPPING (model_mapping.py): basename -> (model class, trust_remote_code).
# The installed 1.4.2 keys are bare basenames; the repository HEAD has org/ prefixes on the last four, which can
# never match because the lookup uses the basename. We keep what users run: 1.4.2.
AUTO_RERANKER_MAPPING: dict[str, tuple[str, bool]] = {
    "bge-reranker-base": (ENCODER, False),
    "bge-reranker-large": (ENCODER, False),
    "bge-reranker-v2-m3": (ENCODER, False),
    "bge-reranker-v2-gemma": (DECODER, False),
    "bge-reranker-v2-minicpm-layerwise": (LAYERWISE, False),
    "bge-reranker-v2.5-gemma2-lightweight": (LIGHTWEIGHT, False),
    "jina-reranker-v2-base-multilingual": (ENCODER, False),
    "gte-multilingual-reranker-base": (ENCODER, False),
    "bce-reranker-base_v1": (ENCODER, False),
    "jina-reranker-v1-turbo-en": (ENCODER, False),
}


def get_kind(model_class: str) -> Kind:
    if model_class not in KINDS:
        raise UnknownFamilyError(f"unknown reranker model class {model_class!r}; expected one of {MODEL_CLASSES}")
    return KINDS[model_class]


def auto_lookup_key(model_name_or_path: str) -> str:
    """FlagAutoReranker's key: the path's basename, or its parent's basename for a `checkpoint-*` folder."""
    name = os.path.basename(model_name_or_path)
    if name.startswith("checkpoint-"):
        name = os.path.basename(os.path.dirname(model_name_or_path))
    return name


def padding_side(kind: Kind, spec: ModelSpec) -> str:
    """FlagEmbedding pads on the tokenizer's own side, except the lightweight class, which forces right."""
    return "right" if kind.force_right_padding else spec.padding_side


def bos_prefix(kind: Kind, spec: ModelSpec) -> list[int]:
    """The ids put before the query of a decoder layout (flagembedding-behaviour.md, Decoder token layout: BOS)."""
    if kind.bos == "template":
        return []
    if kind.bos == "unless_pad":
        if spec.bos_token_id is None or spec.bos_token_id == spec.pad_token_id:
            return []
        return [spec.bos_token_id]
    if spec.bos_token_id is None:
        raise ArtifactError(
            f"{kind.class_name} always prepends the BOS token, but the model spec has bos_token_id=None "
            "(FlagEmbedding would crash on it); export the model with a tokenizer that defines a BOS token"
        )
    return [spec.bos_token_id]


def _require_layers(kind: Kind, spec: ModelSpec) -> tuple[int, int]:
    if spec.num_layers is None or spec.start_layer is None:
        raise ArtifactError(
            f"a {kind.class_name} model spec needs num_layers and start_layer, found "
            f"num_layers={spec.num_layers}, start_layer={spec.start_layer}; re-export the model"
        )
    return spec.num_layers, spec.start_layer


def _int_list(name: str, value: int | Sequence[int]) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple)):
        raise TypeError(f"{name} must be an int or a list of ints, got {type(value).__name__}: {value!r}")
    items = [value] if isinstance(value, int) else list(value)
    for i, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"{name}[{i}] must be an int, got {type(item).__name__}: {item!r}")
    return items


def normalize_cutoffs(value: int | Sequence[int] | None, valid: range, default: int) -> list[int]:
    """None -> [default]; an int -> [int]; every value must be in `valid`.

    Deliberate change: FlagEmbedding drops out-of-range layers with a warning and scores the rest; we raise, so that
    a typo never silently changes which layers are returned.
    """
    if value is None:
        return [default]
    layers = _int_list("cutoff_layers", value)
    bad = [c for c in layers if c not in valid]
    if bad or not layers:
        step = f" in steps of {valid.step}" if valid.step != 1 else ""
        raise ValueError(
            f"cutoff_layers must be values in [{valid.start}, {valid.stop - 1}]{step}; got {layers!r} "
            f"(invalid: {bad if bad else 'empty list'})"
        )
    return layers


def layerwise_exits(cutoff_layers: int | Sequence[int] | None, spec: ModelSpec) -> tuple[tuple[int, int], ...]:
    """(layer, head) per returned score for the MiniCPM layerwise class (flagembedding-behaviour.md, Layerwise cutoff
    layers).

    The states come out in ascending layer order without duplicates, but head i is lm_head[c[i] - start_layer]
    with c the user's list in user order: [6, 2] scores the layer-2 state with the layer-6 head. Reproduced on purpose.
    """
    num_layers, start = _require_layers(KINDS[LAYERWISE], spec)
    c = normalize_cutoffs(cutoff_layers, range(start, num_layers + 1), num_layers)
    states = sorted(set(c))
    return tuple((layer, c[i] - start) for i, layer in enumerate(states))


def lightweight_exits(cutoff_layers: int | Sequence[int] | None, spec: ModelSpec) -> tuple[tuple[int, int], ...]:
    """(layer, head) per returned score for the Gemma-2 lightweight class: head i is lm_head[i]
    (flagembedding-behaviour.md, Lightweight exits)."""
    num_layers, start = _require_layers(KINDS[LIGHTWEIGHT], spec)
    c = normalize_cutoffs(cutoff_layers, range(start, num_layers + 1, spec.layer_sep), num_layers)
    return tuple((layer, i) for i, layer in enumerate(sorted(set(c))))


def compression_stages(
    compress_ratio: int, compress_layers: int | Sequence[int], deepest_exit: int
) -> tuple[int, tuple[int, ...]]:
    """(ratio, stages that run). A stage runs before decoder layer c when 0 < c < deepest exit
    (flagembedding-behaviour.md, Token compression).

    With no stage left the request is canonicalised to ratio 1 (compression.effective): both describe the same
    computation.
    """
    if isinstance(compress_ratio, bool) or not isinstance(compress_ratio, int):
        raise TypeError(f"compress_ratio must be an int >= 1, got {type(compress_ratio).__name__}: {compress_ratio!r}")
    if compress_ratio < 1:
        raise ValueError(f"compress_ratio must be an int >= 1 (1 = no compression), got {compress_ratio}")
    layers = _int_list("compress_layers", compress_layers)
    return effective(compress_ratio, (c for c in layers if 0 < c < deepest_exit))


def build_request(
    kind: Kind,
    spec: ModelSpec,
    *,
    cutoff_layers: int | Sequence[int] | None = None,
    compress_ratio: int = 1,
    compress_layers: int | Sequence[int] = DEFAULT_COMPRESS_LAYERS,
) -> GraphRequest:
    """The graph a call needs. Arguments are already resolved (call value, else instance value, else default)."""
    if kind.model_class == LAYERWISE:
        return GraphRequest(exits=layerwise_exits(cutoff_layers, spec))
    if kind.model_class == LIGHTWEIGHT:
        exits = lightweight_exits(cutoff_layers, spec)
        ratio, stages = compression_stages(compress_ratio, compress_layers, max(layer for layer, _ in exits))
        return GraphRequest(exits=exits, compress_ratio=ratio, compress_layers=stages)
    return GraphRequest()
