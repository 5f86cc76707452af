"""bge-reranker-base / -large / -v2-m3: XLMRobertaForSequenceClassification with one label."""

from __future__ import annotations

from rerank_runtime.spec import ENCODER

from ..models.xlm_roberta import EncoderConfig, XLMRobertaClassifier
from .base import FamilySpec


def build_model(c: dict) -> XLMRobertaClassifier:
    if c.get("num_labels", len(c.get("id2label") or {0: 0})) != 1:
        raise ValueError(f"a reranker has one label; this config has id2label={c.get('id2label')}")
    return XLMRobertaClassifier(EncoderConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"], num_heads=c["num_attention_heads"],
        max_position_embeddings=c["max_position_embeddings"], type_vocab_size=c.get("type_vocab_size", 1),
        layer_norm_eps=c.get("layer_norm_eps", 1e-5), pad_token_id=c.get("pad_token_id", 1), num_labels=1,
    ))


def build_wrapper(model: XLMRobertaClassifier, c: dict, request, extras: dict):
    return model


FAMILY = FamilySpec(
    name="xlm_roberta",
    model_class=ENCODER,
    architectures=("XLMRobertaForSequenceClassification",),
    model_types=("xlm-roberta",),
    build_model=build_model,
    build_wrapper=build_wrapper,
    ignorable_keys=("roberta.embeddings.position_ids", "roberta.pooler.dense.weight", "roberta.pooler.dense.bias"),
    # positions start after the padding id (pad + 1 + i), so 514 position embeddings serve 512 tokens
    max_positions=lambda c: c["max_position_embeddings"] - c.get("pad_token_id", 1) - 1,
)
