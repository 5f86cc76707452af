"""The family registry: one small module per model architecture; generic code goes through this dict."""

from __future__ import annotations

from rerank_runtime.errors import UnknownFamilyError

from .base import Config, FamilySpec
from .gemma import FAMILY as _GEMMA
from .gemma2_lightweight import FAMILY as _GEMMA2_LIGHTWEIGHT
from .minicpm_layerwise import FAMILY as _MINICPM_LAYERWISE
from .xlm_roberta import FAMILY as _XLM_ROBERTA

REGISTRY: dict[str, FamilySpec] = {f.name: f for f in (_XLM_ROBERTA, _GEMMA, _MINICPM_LAYERWISE, _GEMMA2_LIGHTWEIGHT)}


def get_family(name: str) -> FamilySpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownFamilyError(f"unknown model family {name!r}; known families: {sorted(REGISTRY)}") from None


def detect_family(config: Config, model_class: str | None = None) -> FamilySpec:
    """The family whose architectures match config.json (restricted to a FlagEmbedding kind when given)."""
    found = [f for f in REGISTRY.values() if f.matches(config) and (model_class is None or f.model_class == model_class)]
    if len(found) == 1:
        return found[0]
    archs = config.get("architectures") or config.get("model_type")
    supported = {f.name: list(f.architectures) for f in REGISTRY.values()}
    raise UnknownFamilyError(
        f"no supported reranker architecture matches {archs!r}"
        + (f" for model_class {model_class!r}" if model_class else "")
        + f"; supported: {supported}"
    )


__all__ = ["REGISTRY", "FamilySpec", "get_family", "detect_family"]
