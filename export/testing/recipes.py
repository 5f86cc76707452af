"""The testing recipe table: what the checkpoint factory, the demo and the tests know about each family, by name.

A family module (rerank_export.families) says how to load, trace and score a model of its architecture; its recipe
here says how to generate small ones (tokenizer, config.json per size, weight init, the training run of the
"-trained" variants) and how the tests and the demo exercise them. Adding a family touches its module and one entry
here; tests/test_registry.py fails for a registered family that has no recipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from rerank_runtime.errors import UnknownFamilyError

from .training import TrainingRecipe

Config = dict[str, Any]
Scenario = tuple[dict[str, Any], dict[str, Any]]  # (constructor kwargs, compute_score kwargs)


@dataclass(frozen=True)
class Recipe:
    tokenizer_style: str  # rerank_export.testing.tokenizers style
    padding_side: str  # what the generated tokenizer declares, as the real checkpoint's does
    sizes: dict[str, Config]  # config.json of the generated "tiny" and "mid" checkpoints
    init_std: dict[str, float]  # weight init std per size (tiny random models want wide score spreads)
    norm_weight: float  # where norm weights start: 1 for x * w, 0 for Gemma's x * (1 + w)
    training: dict[str, TrainingRecipe]  # per size: the run that makes "<size>-<family>-trained"
    export: dict[str, Any] = field(default_factory=dict)  # export options of the tests' fixture artifacts
    demo: Scenario = ({}, {})  # `make demo`: export options, compute_score kwargs
    oracle: tuple[Scenario, ...] = ()  # reference vs FlagEmbedding 1.4.2 (tests/test_parity_flagembedding.py)
    token_id_lengths: tuple[int, ...] = (64,)  # max_length values whose token ids are compared with FlagEmbedding's
    runtime: tuple[Scenario, ...] = ()  # runtime vs reference and FlagEmbedding (tests/test_runtime_parity.py)


def _gelu_tanh(**fields: Any) -> Config:
    return {"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "gelu_pytorch_tanh", "attention_bias": False,
            "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": "float32", "use_cache": True,
            **fields}


def _xlm_roberta(hidden: int, inter: int, layers: int, heads: int) -> Config:
    return {
        "architectures": ["XLMRobertaForSequenceClassification"], "model_type": "xlm-roberta",
        "vocab_size": 512, "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 514, "type_vocab_size": 1,
        "initializer_range": 0.02, "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
        "position_embedding_type": "absolute", "classifier_dropout": None, "use_cache": True,
        "id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}, "torch_dtype": "float32",
    }


def _gemma(hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int, vocab: int) -> Config:
    return _gelu_tanh(
        architectures=["GemmaForCausalLM"], model_type="gemma", vocab_size=vocab, hidden_size=hidden,
        intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=head_dim, max_position_embeddings=8192, rms_norm_eps=1e-6, rope_theta=10000.0,
        bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=True,
    )


def _minicpm_layerwise(hidden: int, inter: int, layers: int, heads: int, start: int) -> Config:
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


def _gemma2_lightweight(hidden: int, inter: int, layers: int, heads: int, kv: int, head_dim: int, start: int) -> Config:
    return _gelu_tanh(
        architectures=["CostWiseGemmaForCausalLM"], model_type="cost_wise_gemma", vocab_size=512,
        hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=kv, head_dim=head_dim, query_pre_attn_scalar=head_dim, max_position_embeddings=8192,
        rms_norm_eps=1e-6, rope_theta=10000.0, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
        sliding_window=4096, cache_implementation="hybrid", bos_token_id=2, eos_token_id=1, pad_token_id=0,
        layer_wise=True, start_layer=start, layer_sep=1, tie_word_embeddings=True,
    )


_STD = {"tiny": 0.2, "mid": 0.02}
# Passages of one sentence: the task is then learnt in a few hundred steps (three sentences need several times more).
# The tiny models train on the wide init of the random ones; the mid decoders start wider than theirs (0.05 vs 0.02).
_TINY_TRAINING = TrainingRecipe(steps=200, batch_size=32, learning_rate=1e-2, max_sentences=1)
_MID_TRAINING = TrainingRecipe(steps=300, batch_size=16, learning_rate=1e-3, max_sentences=1, init_std=0.05)

# vocab_size in these configs is a floor: the factory raises it to the generated tokenizer's size.
RECIPES: dict[str, Recipe] = {
    "xlm_roberta": Recipe(
        tokenizer_style="xlm-roberta", padding_side="right",
        # real base: 768 hidden, 12 layers, 4x MLP; mid keeps the 4x MLP at a third of the width and half the depth
        sizes={"tiny": _xlm_roberta(32, 64, 2, 4), "mid": _xlm_roberta(256, 1024, 6, 4)},
        init_std=_STD, norm_weight=1.0,
        # post-LN with absolute positions learns slowly from the wide tiny init (it starts narrower) and collapses to a
        # constant score at the decoders' mid learning rate (it takes half)
        training={"tiny": replace(_TINY_TRAINING, init_std=0.05),
                  "mid": TrainingRecipe(steps=300, batch_size=16, learning_rate=5e-4, max_sentences=1)},
        oracle=(({"max_length": 64, "batch_size": 4}, {}),
                ({"max_length": 128, "batch_size": 8}, {"normalize": True}),
                ({"max_length": 64, "query_max_length": 20, "query_instruction_for_rerank": "Q: "}, {})),
        token_id_lengths=(64, 128),
        runtime=(({"max_length": 64, "batch_size": 4}, {}), ({"max_length": 128}, {"normalize": True})),
    ),
    "gemma": Recipe(
        tokenizer_style="gemma", padding_side="left",
        # mid keeps the real model's proportions: 2048 -> 256 hidden, 8x MLP, MQA, and a vocabulary sized so that
        # FlagEmbedding's full-vocabulary head is about a fifth of the compute, as in the real 2.5B model.
        sizes={"tiny": _gemma(32, 64, 2, 4, 1, 8, 512), "mid": _gemma(256, 2048, 3, 8, 1, 32, 5376)},
        init_std=_STD, norm_weight=0.0,
        training={"tiny": _TINY_TRAINING, "mid": _MID_TRAINING},
        oracle=(({"max_length": 64, "batch_size": 4}, {}),
                ({"max_length": 128, "batch_size": 8, "normalize": True}, {}),
                ({"max_length": 48}, {"prompt": "Is B relevant to A? Answer Yes or No."})),
        token_id_lengths=(64, 128),
        runtime=(({"max_length": 64, "batch_size": 4}, {}), ({"max_length": 128, "normalize": True}, {})),
    ),
    "minicpm_layerwise": Recipe(
        tokenizer_style="llama", padding_side="right",
        # real: 2304 hidden, 2.5x MLP, 40 layers, heads from layer 8 (a fifth of the way in)
        sizes={"tiny": _minicpm_layerwise(32, 80, 6, 4, 2), "mid": _minicpm_layerwise(256, 640, 8, 4, 2)},
        init_std=_STD, norm_weight=1.0,
        training={"tiny": _TINY_TRAINING, "mid": _MID_TRAINING},
        demo=({}, {"cutoff_layers": [3, 6]}),
        oracle=(({"max_length": 64, "batch_size": 4}, {"cutoff_layers": [3]}),
                ({"max_length": 128, "batch_size": 8}, {"cutoff_layers": [2, 4, 6], "normalize": True}),
                ({"max_length": 64}, {}),
                ({"max_length": 64}, {"cutoff_layers": [6, 2]})),  # FlagEmbedding's head-pairing quirk
        runtime=(({"max_length": 64, "batch_size": 4}, {"cutoff_layers": [3]}),
                 ({"max_length": 128}, {"cutoff_layers": [2, 4, 6], "normalize": True}),
                 ({"max_length": 64}, {})),  # the default: the full model (layer 6)
    ),
    "gemma2_lightweight": Recipe(
        tokenizer_style="gemma", padding_side="left",
        # real: 3584 hidden, 4x MLP, 42 layers, GQA 16/8 heads of 256, exits from layer 8
        sizes={"tiny": _gemma2_lightweight(32, 64, 6, 4, 2, 8, 2),
               "mid": _gemma2_lightweight(256, 1024, 8, 4, 2, 64, 2)},
        init_std=_STD, norm_weight=0.0,
        training={"tiny": _TINY_TRAINING, "mid": _MID_TRAINING},
        # the tests' export bakes two exits and two compounding compression stages
        export={"cutoff_layers": (4, 6), "compress_ratio": 2, "compress_layers": (2, 4)},
        demo=({"cutoff_layers": (4,), "compress_ratio": 2, "compress_layers": (2,)}, {}),
        oracle=(({"max_length": 64, "batch_size": 4}, {"cutoff_layers": [4]}),
                ({"max_length": 64}, {"cutoff_layers": [3, 6], "compress_ratio": 2, "compress_layers": [2]}),
                ({"max_length": 128, "batch_size": 8},
                 {"cutoff_layers": [5], "compress_ratio": 2, "compress_layers": [2, 4], "normalize": True}),
                ({"max_length": 64}, {"compress_ratio": 3, "compress_layers": [1, 3]})),
        runtime=(({"max_length": 64, "batch_size": 4}, {}),  # baked: cutoffs [4, 6], ratio 2, layers [2, 4]
                 ({"max_length": 128}, {"normalize": True}),
                 # the baked settings spelled out, in another order
                 ({"max_length": 64, "cutoff_layers": [6, 4], "compress_ratio": 2, "compress_layers": [4, 2]}, {}),
                 # the shallower exit alone: the stage at layer 4 lies past it, so the graph gets a pass-through
                 # plan there (FlagEmbedding never reaches that stage)
                 ({"max_length": 64}, {"cutoff_layers": [4]})),
    ),
}


def get_recipe(family: str) -> Recipe:
    try:
        return RECIPES[family]
    except KeyError:
        raise UnknownFamilyError(
            f"family {family!r} has no testing recipe; add one to rerank_export.testing.recipes.RECIPES "
            f"(families with one: {sorted(RECIPES)})"
        ) from None
