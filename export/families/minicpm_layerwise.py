"""bge-reranker-v2-minicpm-layerwise: MiniCPM with one score head per layer from start_layer.

Exit (L, H) scores FinalNorm(state after L layers) with lm_head[H]; FlagEmbedding's head for layer L is
L - start_layer (section 4.3), and its pairing quirk for unsorted cutoff lists is applied on the host.
"""

from __future__ import annotations

from rerank_runtime.spec import LAYERWISE

from ..models.decoder import DecoderConfig, scale_depth_factor
from .base import FamilySpec
from .decoder_common import CausalLM, decoder_config, layer_exits


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
    from ..models.scoring import DecoderScorer

    return DecoderScorer(model.model, layer_exits(model, request, lambda head: head))


def _size(hidden, inter, layers, heads, start) -> dict:
    return {
        "architectures": ["LayerWiseMiniCPMForCausalLM"], "model_type": "minicpm",
        "vocab_size": 512, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None, "hidden_act": "silu",
        "attention_bias": False, "attention_dropout": 0.0, "pretraining_tp": 1, "initializer_range": 0.1,
        "scale_emb": 12, "scale_depth": 1.4, "dim_model_base": 256, "start_layer": start,
        "head_type": "simple", "head_multi": True, "bos_token_id": 1, "eos_token_id": 2,
        "use_cache": False, "tie_word_embeddings": False, "torch_dtype": "float32",
    }


FAMILY = FamilySpec(
    name="minicpm_layerwise",
    model_class=LAYERWISE,
    architectures=("LayerWiseMiniCPMForCausalLM",),
    model_types=("minicpm",),
    tokenizer_style="llama",
    build_model=build_model,
    build_wrapper=build_wrapper,
    # real: 2304 hidden, 2.5x MLP, 40 layers, heads from layer 8 (a fifth of the way in)
    sizes={"tiny": _size(32, 80, 6, 4, 2), "mid": _size(256, 640, 8, 4, 2)},
    init_std={"tiny": 0.2, "mid": 0.02},
    layers=_layers,
)
