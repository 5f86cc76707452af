"""The contract between the host-side scoring logic and whatever runs the graph.

`ModelSpec` is everything the host needs to know about a model to build FlagEmbedding's token ids and to
map FlagEmbedding's arguments onto graph outputs. The exporter writes it into manifest.json; the PyTorch
reference derives it from the checkpoint directory. `GraphRequest` says which graph a call needs; a `Front`
checks it against the graph that is served and runs it (front.GraphFront, the one request front); a `Backend` runs
that graph on one device: ONNX Runtime, a TensorRT engine, or the PyTorch reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Protocol

import numpy as np

# FlagEmbedding's four RerankerModelClass strings.
ENCODER = "encoder-only-base"
DECODER = "decoder-only-base"
LAYERWISE = "decoder-only-layerwise"
LIGHTWEIGHT = "decoder-only-lightweight"
MODEL_CLASSES = (ENCODER, DECODER, LAYERWISE, LIGHTWEIGHT)


TOKEN_INPUTS = ("input_ids", "attention_mask")  # every graph's first two inputs, int64 [batch, sequence]
YES_TEXT = "Yes"  # the decoder kinds score the logit of this text's first token (FlagEmbedding's "Yes" id)
PADDING_SIDES = ("left", "right")


class SpecFieldError(ValueError):
    """A ModelSpec field of the wrong type or range: `field` is its name, `problem` says what was expected and found."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem = field, problem


def _int(minimum: int, optional: bool = False) -> tuple[str, Callable[[Any], bool]]:
    expected = ("null or " if optional else "") + f"an integer >= {minimum}"
    return expected, lambda v: (optional and v is None) or (type(v) is int and v >= minimum)


# field -> (what it must be, test); every field of ModelSpec is listed
_FIELD_RULES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model_class": (f"one of {list(MODEL_CLASSES)}", lambda v: v in MODEL_CLASSES),
    "pad_token_id": _int(0),
    "padding_side": (f"one of {list(PADDING_SIDES)}", lambda v: v in PADDING_SIDES),
    "bos_token_id": _int(0, optional=True),
    **{name: ("a list of integers >= 0", lambda v: isinstance(v, (list, tuple)) and all(type(x) is int and x >= 0
                                                                                        for x in v))
       for name in ("pair_prefix", "pair_middle", "pair_suffix")},
    "yes_token_id": _int(0, optional=True),
    "num_layers": _int(1, optional=True),
    "start_layer": _int(0, optional=True),
    "layer_sep": _int(1),
    "max_positions": _int(1, optional=True),
}


@dataclass(frozen=True)
class ModelSpec:
    """Checked on construction: a field of the wrong type or range raises SpecFieldError naming it."""

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
    # the longest token sequence the model's position table serves (XLM-R: max_position_embeddings minus the
    # padding offset; rotary decoders: max_position_embeddings); None where unknown
    max_positions: int | None = None

    def __post_init__(self) -> None:
        for name, (expected, ok) in _FIELD_RULES.items():
            value = getattr(self, name)
            if not ok(value):
                raise SpecFieldError(name, f"must be {expected}, found {value!r}")
        for name in ("pair_prefix", "pair_middle", "pair_suffix"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.num_layers is not None and self.start_layer is not None and self.start_layer > self.num_layers:
            raise SpecFieldError("start_layer", f"({self.start_layer}) must not exceed num_layers ({self.num_layers})")

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
        for required in ("model_class", "pad_token_id"):
            if required not in d:
                raise SpecFieldError(required, "is missing")
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
    """Runs one served graph on one device (front.RoundRobin puts several behind one).

    run(names, feeds): feeds are exactly the graph's inputs in its dtypes (front.ServedGraph.complete made them):
    input_ids int64 [B, S], attention_mask int64 [B, S] and, for compression stage k, compress_index_{k} int64
    [B, S_k, r] and compress_weight_{k} float32 [B, S_k, r]. Returns one float32 array of raw scores [B] per name, in
    that order. run() may be called from several threads at once; concurrency says how many calls make progress
    together (1 for one device), so that the host keeps that many batches in flight.
    """

    concurrency: int

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]: ...


class Front(Protocol):
    """What the host side calls (scoring.Scorer): check a request once per call, then run it on each padded batch
    (the host's feeds: token ids, mask and the compression plans the request runs). front.GraphFront is the one
    implementation over a Backend; test doubles implement it directly."""

    concurrency: int

    def check(self, request: GraphRequest) -> None: ...

    def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass
class Loaded:
    """What a loader hands to the FlagEmbedding-compatible classes (Reranker.from_loaded takes one).

    front: where requests are checked and run (an export: a GraphFront over its backends).
    defaults: instance defaults implied by the model (e.g. an artifact's baked cutoff_layers, compress_ratio and
    compress_layers), used where the user passed nothing.
    max_length: the FlagEmbedding max_length an export was sized and verified for; longer settings are refused with
    LengthLimitError (the PyTorch reference has none: only the model's max_positions bounds it).
    """

    spec: ModelSpec
    tokenizer: Any  # tokenizers.Tokenizer
    front: Front
    defaults: dict[str, Any] = field(default_factory=dict)
    max_length: int | None = None  # the export's max_length (rerank-export --max-length); None: no export limit
