"""Useful FLOPs per pair, counted from config.json and the real token counts (padding excluded).

Counted: every matmul that the score needs, at 2 FLOPs per multiply-add: the linear layers of the layers that run,
attention's Q.K^T and P.V over the real tokens only (bidirectional for the encoder, causal lower triangle for the
decoders, limited by Gemma-2's sliding window on its even layers), and the score head (the encoder's classifier on
<s>; one hidden-size dot product per exit for the decoders). Not counted: norms, softmax, activations, rotary, the
embedding lookup, token compression's averaging, and work FlagEmbedding does that the score does not need (its
probe forward, padding, the 256k-wide LM head): those are what an implementation wastes, not what it must do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENCODER = "encoder-only-base"


@dataclass(frozen=True)
class Arch:
    """What the FLOP count needs to know about a model and the graph a call runs."""

    encoder: bool
    hidden: int
    intermediate: int
    layers_run: int
    heads: int
    kv_heads: int
    head_dim: int
    exits: int = 1
    sliding_window: int | None = None  # decoder layers with an even index attend to the last `window` keys only
    compress_ratio: int = 1
    compress_layers: tuple[int, ...] = field(default_factory=tuple)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], model_class: str, exits: tuple[tuple[int, int], ...] = (),
                    compress_ratio: int = 1, compress_layers: tuple[int, ...] = ()) -> Arch:
        """exits: the call's (layer, head) pairs (empty for single-score kinds: every layer runs)."""
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        layers = max(layer for layer, _ in exits) if exits else int(config["num_hidden_layers"])
        if model_class == ENCODER:
            return cls(True, hidden, int(config["intermediate_size"]), layers, heads, heads, hidden // heads)
        return cls(
            encoder=False, hidden=hidden, intermediate=int(config["intermediate_size"]), layers_run=layers,
            heads=heads, kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads), exits=max(1, len(exits)),
            sliding_window=config.get("sliding_window"),
            compress_ratio=compress_ratio if compress_layers else 1,
            compress_layers=tuple(compress_layers) if compress_ratio > 1 else (),
        )

    def linear_macs_per_token(self) -> int:
        h, i = self.hidden, self.intermediate
        if self.encoder:
            return 4 * h * h + 2 * h * i  # Q, K, V, O; MLP up and down
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        return 2 * h * q + 2 * h * kv + 3 * h * i  # Q and O, K and V, gated MLP (gate, up, down)

    def attended(self, layer: int, n: int) -> int:
        """Number of (query, key) pairs that attention computes over n real tokens at this layer."""
        if self.encoder:
            return n * n
        window = self.sliding_window
        if window is not None and layer % 2 == 0 and n > window:
            return window * (window + 1) // 2 + (n - window) * window
        return n * (n + 1) // 2

    def head_flops(self) -> int:
        if self.encoder:
            return 2 * (self.hidden * self.hidden + self.hidden)  # classifier dense on <s>, then out_proj
        return 2 * self.hidden * self.exits


def compressed_length(n: int, query_length: int, prompt_length: int, ratio: int) -> int:
    """Sequence length after one compression stage: the passage shrinks to ceil(p / ratio) tokens."""
    passage = n - query_length - prompt_length
    if passage < 0:
        raise ValueError(f"query ({query_length}) + prompt ({prompt_length}) tokens exceed the sequence ({n})")
    return query_length + math.ceil(passage / ratio) + prompt_length


def pair_flops(arch: Arch, n: int, query_length: int = 0, prompt_length: int = 0) -> int:
    """Useful FLOPs to score one pair of n tokens (query/prompt lengths matter only with compression)."""
    total, length = 0, n
    stages = set(arch.compress_layers)
    for layer in range(arch.layers_run):
        if layer in stages:
            length = compressed_length(length, query_length, prompt_length, arch.compress_ratio)
        attention_macs = 2 * arch.heads * arch.head_dim * arch.attended(layer, length)  # Q.K^T and P.V
        total += 2 * (length * arch.linear_macs_per_token() + attention_macs)
    return total + arch.head_flops()


def total_flops(arch: Arch, lengths: list[int], query_lengths: list[int] | None = None,
                prompt_lengths: list[int] | None = None) -> int:
    """Useful FLOPs to score every pair once."""
    qls = query_lengths or [0] * len(lengths)
    pls = prompt_lengths or [0] * len(lengths)
    return sum(pair_flops(arch, n, q, p) for n, q, p in zip(lengths, qls, pls))

