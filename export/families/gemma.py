"""bge-reranker-v2-gemma: GemmaForCausalLM; the score is the "Yes" logit at the last real token.

Only the "Yes" row of the (tied) output head is computed, never the 256k-wide logits.
"""

from __future__ import annotations

from rerank_runtime.spec import DECODER

from ..models.decoder import DecoderConfig
from .base import FamilySpec
from .decoder_common import CausalLM, decoder_config, gelu_tanh_config


def _config(c: dict) -> DecoderConfig:
    return decoder_config(
        c,
        head_dim=c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"],
        attn_scale=(c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]) ** -0.5,
        embed_scale=c["hidden_size"] ** 0.5,
        embed_scale_in_dtype=True,
        residual_scale=1.0,
        norm_plus_one=True,
        act="gelu_tanh",
        post_norms=False,
        sliding_window=None,
    )


def build_model(c: dict) -> CausalLM:
    return CausalLM(_config(c), lm_head_rows=None)


def build_wrapper(model: CausalLM, c: dict, request, extras: dict):
    from ..models.scoring import DecoderScorer, SingleScore

    yes = extras["yes_token_id"]
    row = model.lm_head_weight()[yes]
    return SingleScore(DecoderScorer(model.model, [(model.model.cfg.num_layers, row)]))


def _size(hidden, inter, layers, heads, kv, head_dim, vocab) -> dict:
    return gelu_tanh_config(
        architectures=["GemmaForCausalLM"], model_type="gemma", vocab_size=vocab, hidden_size=hidden,
        intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=head_dim, max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
        bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=True,
    )


FAMILY = FamilySpec(
    name="gemma",
    model_class=DECODER,
    architectures=("GemmaForCausalLM",),
    model_types=("gemma",),
    tokenizer_style="gemma",
    build_model=build_model,
    build_wrapper=build_wrapper,
    # mid keeps the real model's proportions: 2048 -> 256 hidden, 8x MLP, MQA, and a vocabulary sized so that
    # FlagEmbedding's full-vocabulary head is about a fifth of the compute, as in the real 2.5B model.
    sizes={"tiny": _size(32, 64, 2, 4, 1, 8, 512), "mid": _size(256, 2048, 3, 8, 1, 32, 5376)},
    init_std={"tiny": 0.2, "mid": 0.02},
    ignorable_keys=("lm_head.weight",),
)
