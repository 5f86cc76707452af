"""bge-reranker-v2-minicpm-layerwise: MiniCPM with one score head per layer from start_layer.

Exit (L, H) scores FinalNorm(state after L layers) with lm_head[H]; FlagEmbedding's head for layer L is
L - start_layer, and its pairing quirk for unsorted cutoff lists is applied on the host (docs/flagembedding-behaviour.md,
Layerwise cutoff layers).
"""

from __future__ import annotations

from rerank_runtime.spec import LAYERWISE

from ..models.decoder import DecoderConfig, scale_depth_factor
from .base import FamilySpec
from .decoder_common import CausalLM, decoder_config, layer_exits, scorer


def _config(c: dict) -> DecoderConfig:
    head_dim = c["hidden_size"] // c["num_attention_heads"]
    return decoder_config(
        c,
        head_dim=head_dim,
        attn_scale=head_dim**-0.5,
        embed_scale=float(c.get("scale_emb", 1)),
        embed_scale_in_dtype=False,
        residual_scale=scale_depth_factor(c.get("scale_depth", 1.0), c["num_hidden_layers"]),
        norm_plus_one=False,
        act="silu",
        post_norms=False,
        sliding_window=None,
    )


def _layers(c: dict) -> tuple[int, int, int]:
    return c["num_hidden_layers"], c.get("start_layer", 0), 1


def build_model(c: dict) -> CausalLM:
    n, start, _ = _layers(c)
    return CausalLM(_config(c), lm_head_rows=n - start + 1)


def build_wrapper(model: CausalLM, c: dict, request, extras: dict):
    return scorer(model, layer_exits(model, request, lambda head: head), extras)


FAMILY = FamilySpec(
    name="minicpm_layerwise",
    model_class=LAYERWISE,
    architectures=("LayerWiseMiniCPMForCausalLM",),
    model_types=("minicpm",),
    build_model=build_model,
    build_wrapper=build_wrapper,
    layers=_layers,
)
