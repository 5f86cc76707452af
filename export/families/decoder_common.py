"""Pieces shared by the decoder families: the CausalLM container and config helpers."""

from __future__ import annotations

import torch
from torch import nn

from ..models.decoder import DecoderConfig, DecoderModel
from ..models.scoring import DecoderScorer


class LayerHead(nn.Module):
    """lm_head.K.linear_head of the layerwise checkpoints (hidden -> 1, no bias)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.linear_head = nn.Linear(hidden, 1, bias=False)


class CausalLM(nn.Module):
    """`model.*` plus, for the layerwise kinds, `lm_head.K.linear_head.weight`; tied embeddings otherwise."""

    def __init__(self, cfg: DecoderConfig, lm_head_rows: int | None):
        super().__init__()
        self.model = DecoderModel(cfg)
        if lm_head_rows is not None:
            self.lm_head = nn.ModuleList(LayerHead(cfg.hidden_size) for _ in range(lm_head_rows))
        self.untied_lm_head: torch.Tensor | None = None  # set by the loader when a checkpoint has lm_head.weight

    def lm_head_weight(self) -> torch.Tensor:
        return self.untied_lm_head if self.untied_lm_head is not None else self.model.embed_tokens.weight

    def head_row(self, k: int) -> torch.Tensor:
        return self.lm_head[k].linear_head.weight[0]


def decoder_config(c: dict, **kw) -> DecoderConfig:
    return DecoderConfig(
        vocab_size=c["vocab_size"],
        hidden_size=c["hidden_size"],
        intermediate_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"],
        num_heads=c["num_attention_heads"],
        num_kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"],
        rms_norm_eps=c["rms_norm_eps"],
        rope_theta=c.get("rope_theta", 10000.0),
        **kw,
    )


def scorer(model: CausalLM, exits: list[tuple[int, torch.Tensor]], extras: dict, **options) -> DecoderScorer:
    """The score graph over `exits`; extras["train"] (set only by the test-checkpoint trainer) keeps the head rows
    attached to the weights, so that training reaches them."""
    return DecoderScorer(model.model, exits, trainable=bool(extras.get("train")), **options)


def layer_exits(model: CausalLM, request, head_of) -> list[tuple[int, torch.Tensor]]:
    """(layer, head row) for each exit of the request; head_of maps the request's head index to an lm_head index."""
    return [(layer, model.head_row(head_of(head))) for layer, head in request.exits]
