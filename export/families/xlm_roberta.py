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


def _size(hidden, inter, layers, heads) -> dict:
    return {
        "architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta",
        "vocab_size": 512, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514, "type_vocab_size": 1,
        "initializer_range": 0.02, "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "position_embedding_type": "absolute", "classifier_dropout": None, "use_cache": True,
        "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "torch_dtype": "float32",
    }


FAMILY = FamilySpec(
    name="xlm_roberta",
    model_class=ENCODER,
    architectures=("XLMRobertaForSequenceClassification",),
    model_types=("xlm-roberta",),
    tokenizer_style="xlm-roberta",
    build_model=build_model,
    build_wrapper=build_wrapper,
    # real base: 768 hidden, 12 layers, 4x MLP; mid keeps the 4x MLP at a third of the width and half the depth
    sizes={"tiny": _size(32, 64, 2, 4), "mid": _size(256, 1024, 6, 4)},
    init_std={"tiny": 0.2, "mid": 0.02},
    ignorable_keys=("roberta.embeddings.position_ids", "roberta.pooler.dense.weight", "roberta.pooler.dense.bias"),
    # positions start after the padding id (pad + 1 + i), so 514 position embeddings serve 512 tokens
    max_positions=lambda c: c["max_position_embeddings"] - c.get("pad_token_id", 1) - 1,
)
