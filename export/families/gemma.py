"""bge-reranker-v2-gemma: GemmaForCausalLM; the score is the "Yes" logit at the last real token.

Only the "Yes" row of the (tied) output head is computed, never the 256k-wide logits.
"""

from __future__ import annotations

from rerank_runtime.spec import DECODER

from ..models.decoder import DecoderConfig
from .base import FamilySpec
from .decoder_common import CausalLM, decoder_config, scorer


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
    from ..models.scoring import SingleScore

    row = model.lm_head_weight()[extras["yes_token_id"]]
    return SingleScore(scorer(model, [(model.model.cfg.num_layers, row)], extras))


FAMILY = FamilySpec(
    name="gemma",
    model_class=DECODER,
    architectures=("GemmaForCausalLM",),
    model_types=("gemma",),
    build_model=build_model,
    build_wrapper=build_wrapper,
    ignorable_keys=("lm_head.weight",),
)
