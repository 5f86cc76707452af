"""The contract between the host-side scoring logic and whatever runs the graph.

`ModelSpec` is everything the host needs to know about a model to build FlagEmbedding's token ids and to
map FlagEmbedding's arguments onto graph outputs. The exporter writes it into manifest.json; the PyTorch
reference derives it from the checkpoint directory. `GraphRequest` says which graph a call needs, and a
`Backend` runs it: ONNX Runtime, a TensorRT engine, or the PyTorch reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

import numpy as np

# FlagEmbedding's four RerankerModelClass strings.
ENCODER = "encoder-only-base"
DECODER = "decoder-only-base"
LAYERWISE = "decoder-only-layerwise"
LIGHTWEIGHT = "decoder-only-lightweight"
MODEL_CLASSES = (ENCODER, DECODER, LAYERWISE, LIGHTWEIGHT)


@dataclass(frozen=True)
class ModelSpec:
    model_class: str
    pad_token_id: int
    padding_side: str = "right"  # the tokenizer's own side; FlagEmbedding pads with it (lightweight forces right)
    bos_token_id: int | None = None
    # encoder pair template: prefix + Q + middle + P + suffix (XLM-R: <s> Q </s></s> P </s>)
    pair_prefix: tuple[int, ...] = ()
    pair_middle: tuple[int, ...] = ()
    pair_suffix: tuple[int, ...] = ()
    yes_token_id: int | None = None
    num_layers: int | None = None
    start_layer: int | None = None
    layer_sep: int = 1
    model_max_length: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("pair_prefix", "pair_middle", "pair_suffix"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown ModelSpec fields {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        for k in ("pair_prefix", "pair_middle", "pair_suffix"):
            if k in d:
                d[k] = tuple(d[k])
        if d.get("model_class") not in MODEL_CLASSES:
            raise ValueError(f"model_class {d.get('model_class')!r} is not one of {MODEL_CLASSES}")
        return cls(**d)


@dataclass(frozen=True)
class GraphRequest:
    """Which graph a compute_score call needs.

    exits: (layer, head_index) pairs, one graph output each, in the order the scores are returned.
      Empty for the single-score kinds (encoder, decoder base), whose graph has the one output "score".
    compress_ratio: 1 means no compression.
    compress_layers: the compression stages that actually run (0 < layer < deepest exit), ascending.
    """

    exits: tuple[tuple[int, int], ...] = ()
    compress_ratio: int = 1
    compress_layers: tuple[int, ...] = field(default_factory=tuple)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(exit_name(layer, head) for layer, head in self.exits) if self.exits else ("score",)


def exit_name(layer: int, head: int) -> str:
    return f"score_l{layer}_h{head}"


class Backend(Protocol):
    """Runs a graph on a padded batch.

    feeds: input_ids int64 [B, S], attention_mask int64 [B, S] and, for compression stage k,
    compress_index_{k} int64 [B, S_k, r] and compress_weight_{k} float32 [B, S_k, r].
    Returns one float32 array of raw scores [B] per name in request.output_names, in that order.
    """

    def check(self, request: GraphRequest) -> None: ...

    def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass
class Loaded:
    """What a loader hands to the FlagEmbedding-compatible classes.

    defaults: instance defaults implied by the model (e.g. an artifact's baked cutoff_layers, compress_ratio and
    compress_layers), used where the user passed nothing.
    """

    spec: ModelSpec
    tokenizer: Any  # tokenizers.Tokenizer
    backend: Backend
    defaults: dict[str, Any] = field(default_factory=dict)
