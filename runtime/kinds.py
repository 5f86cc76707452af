"""What differs between FlagEmbedding's four reranker classes, and how their arguments become a GraphRequest.

Everything here follows FlagEmbedding 1.4.2 as docs/flagembedding-behaviour.md states it (Decoder token layout,
Layerwise cutoff layers, Lightweight exits, Token compression, FlagAutoReranker), with the deliberate changes marked in
comments.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
ExitRule = Callable[[int | Sequence[int] | None, ModelSpec], tuple[tuple[int, int], ...]]


@dataclass(frozen=True)
class Kind:
    """One FlagEmbedding reranker class: everything the host side, the manifest and the exporter do differently for
    it is a field here (generic code never compares model_class strings)."""

    model_class: str
    class_name: str
    # the token layout: None means the encoder's pair template (prefix Q middle P suffix, no prompt); a prompt means
    # FlagEmbedding's LLM layout, BOS + Q | SEP + P | SEP + prompt, scored by the "Yes" logit
    default_prompt: str | None = None
    query_instruction: str | None = None
    passage_instruction: str | None = None
    bos: BosRule = "template"  # template: none beyond the pair template; unless_pad: BOS when bos != pad; always
    pad_multiple: int | None = None  # batches pad to a multiple of this (None: to the longest row)
    force_right_padding: bool = False  # else the tokenizer's own side
    # cutoff_layers -> (layer, head) per returned score, one graph output each; None: one "score" output
    exits: ExitRule | None = None
    takes_compression: bool = False  # token compression (compress_ratio, compress_layers), with its query/prompt spans
    # an export keeps every head (layer, layer - start_layer) up to the deepest cutoff, so that any cutoff list within
    # it can be served; otherwise it bakes exactly the requested exits (and compression)
    bakes_every_head: bool = False
    exit_rule: str = ""  # the exits rule in words, for the messages that refuse an exit (hints.exits_message)

    @property
    def takes_cutoff(self) -> bool:
        return self.exits is not None

    @property
    def prompted(self) -> bool:
        """The LLM layout (separator, prompt, "Yes" logit) rather than the encoder's pair template."""
        return self.default_prompt is not None

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


def _require_layers(class_name: str, spec: ModelSpec) -> tuple[int, int]:
    if spec.num_layers is None or spec.start_layer is None:
        raise ArtifactError(
            f"a {class_name} model spec needs num_layers and start_layer, found "
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
    num_layers, start = _require_layers("LayerWiseFlagLLMReranker", spec)
    c = normalize_cutoffs(cutoff_layers, range(start, num_layers + 1), num_layers)
    states = sorted(set(c))
    return tuple((layer, c[i] - start) for i, layer in enumerate(states))


def lightweight_exits(cutoff_layers: int | Sequence[int] | None, spec: ModelSpec) -> tuple[tuple[int, int], ...]:
    """(layer, head) per returned score for the Gemma-2 lightweight class: head i is lm_head[i]
    (flagembedding-behaviour.md, Lightweight exits)."""
    num_layers, start = _require_layers("LightWeightFlagLLMReranker", spec)
    c = normalize_cutoffs(cutoff_layers, range(start, num_layers + 1, spec.layer_sep), num_layers)
    return tuple((layer, i) for i, layer in enumerate(sorted(set(c))))


KINDS: dict[str, Kind] = {
    ENCODER: Kind(model_class=ENCODER, class_name="FlagReranker"),
    DECODER: Kind(model_class=DECODER, class_name="FlagLLMReranker", default_prompt=DEFAULT_PROMPT,
                  query_instruction="A: ", passage_instruction="B: ", bos="unless_pad", pad_multiple=8),
    LAYERWISE: Kind(model_class=LAYERWISE, class_name="LayerWiseFlagLLMReranker", default_prompt=DEFAULT_PROMPT,
                    query_instruction="A: ", passage_instruction="B: ", bos="always", pad_multiple=8,
                    exits=layerwise_exits, bakes_every_head=True,
                    exit_rule="LayerWiseFlagLLMReranker scores the i-th layer, in ascending order, with the head of "
                              "the i-th cutoff layer as given (FlagEmbedding's rule: cutoff_layers=[6, 2] scores "
                              "layer 2 with the layer-6 head), and an export keeps each layer's own head"),
    LIGHTWEIGHT: Kind(model_class=LIGHTWEIGHT, class_name="LightWeightFlagLLMReranker",
                      default_prompt=LIGHTWEIGHT_PROMPT, query_instruction="A: ", passage_instruction="B: ",
                      bos="always", pad_multiple=8, force_right_padding=True, exits=lightweight_exits,
                      takes_compression=True,
                      exit_rule="LightWeightFlagLLMReranker scores the i-th requested cutoff layer, in ascending "
                                "order, with head i (FlagEmbedding's rule), so a layer's score depends on the whole "
                                "list: an export made for [3, 4] scores layer 4 with head 1 and serves [3, 4] or [3], "
                                "while cutoff_layers=[4] alone scores layer 4 with head 0"),
}


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
    if kind.exits is None:
        return GraphRequest()
    exits = kind.exits(cutoff_layers, spec)
    if not kind.takes_compression:
        return GraphRequest(exits=exits)
    ratio, stages = compression_stages(compress_ratio, compress_layers, max(layer for layer, _ in exits))
    return GraphRequest(exits=exits, compress_ratio=ratio, compress_layers=stages)
