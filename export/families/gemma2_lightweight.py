"""bge-reranker-v2.5-gemma2-lightweight: Gemma-2 with layer exits and in-model token compression.

FlagEmbedding 1.4.2 quirks reproduced on purpose (docs/flagembedding-behaviour.md: Lightweight exits, Token
compression):
- the i-th requested exit is scored with lm_head[i] (its position in the sorted cutoff list), not layer - start;
- attention runs under SDPA, where Gemma-2's attention-logit soft-cap (50) is NOT applied; the final 30*tanh(x/30)
  soft-cap is;
- compression before layer c happens after the exit at layer c has been captured.
"""

from __future__ import annotations

from rerank_runtime.spec import LIGHTWEIGHT

from ..models.decoder import DecoderConfig
from .base import FamilySpec
from .decoder_common import CausalLM, decoder_config, layer_exits, scorer


def _config(c: dict) -> DecoderConfig:
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return decoder_config(
        c,
        head_dim=head_dim,
        attn_scale=float(c.get("query_pre_attn_scalar", head_dim)) ** -0.5,
        embed_scale=c["hidden_size"] ** 0.5,
        embed_scale_in_dtype=True,
        residual_scale=1.0,
        norm_plus_one=True,
        act="gelu_tanh",
        post_norms=True,
        sliding_window=c.get("sliding_window"),
    )


def _layers(c: dict) -> tuple[int, int, int]:
    return c["num_hidden_layers"], c.get("start_layer", 0), c.get("layer_sep", 1)


def build_model(c: dict) -> CausalLM:
    n, start, sep = _layers(c)
    return CausalLM(_config(c), lm_head_rows=len(range(start, n + 1, sep)))


def build_wrapper(model: CausalLM, c: dict, request, extras: dict):
    exits = layer_exits(model, request, lambda head: head)
    return scorer(model, exits, extras, stages=request.compress_layers if request.compress_ratio > 1 else (),
                  softcap=c.get("final_logit_softcapping"))


def extra_inputs(request) -> tuple[str, ...]:
    if request.compress_ratio <= 1:
        return ()
    return tuple(n for k in range(len(request.compress_layers)) for n in (f"compress_index_{k}", f"compress_weight_{k}"))


FAMILY = FamilySpec(
    name="gemma2_lightweight",
    model_class=LIGHTWEIGHT,
    architectures=("CostWiseGemmaForCausalLM",),
    model_types=("cost_wise_gemma",),
    build_model=build_model,
    build_wrapper=build_wrapper,
    extra_inputs=extra_inputs,
    layers=_layers,
)
