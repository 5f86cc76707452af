"""What a model family is: one small declarative spec. Generic code only ever talks to FamilySpec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rerank_runtime.spec import GraphRequest

# A checkpoint's config.json as a dict.
Config = dict[str, Any]


@dataclass(frozen=True)
class FamilySpec:
    name: str
    model_class: str  # the FlagEmbedding kind it is scored as
    architectures: tuple[str, ...]  # config.json "architectures" values that mean this family
    model_types: tuple[str, ...]  # config.json "model_type" values (fallback when architectures is absent)
    build_model: Callable[[Config], Any]  # config -> torch module with the checkpoint's parameter names
    build_wrapper: Callable[[Any, Config, GraphRequest, dict], Any]  # (model, config, request, extras) -> nn.Module
    ignorable_keys: tuple[str, ...] = ()  # checkpoint tensors that are not part of the scoring model
    extra_inputs: Callable[[GraphRequest], tuple[str, ...]] = field(default=lambda request: ())
    # Layerwise kinds: (num_layers, start_layer, layer_sep) read from the config; None for single-score kinds.
    layers: Callable[[Config], tuple[int, int, int] | None] = field(default=lambda config: None)
    # The longest token sequence the model's positions serve (ModelSpec.max_positions); rotary decoders: the
    # trained max_position_embeddings.
    max_positions: Callable[[Config], int | None] = field(default=lambda config: config.get("max_position_embeddings"))

    def matches(self, config: Config) -> bool:
        archs = config.get("architectures") or []
        if archs:
            return any(a in self.architectures for a in archs)
        return config.get("model_type") in self.model_types
