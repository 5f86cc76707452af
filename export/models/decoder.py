"""Decoder-only transformers (Gemma, Gemma-2, MiniCPM) in plain torch, written to be exported.

One stack serves the three families; `DecoderConfig` holds what differs. Parameter names are the real
checkpoints' (model.embed_tokens, model.layers.N.self_attn.q_proj, ..., model.norm), so the same code loads a
real checkpoint and a generated one.

Export rules followed here: no Python branch on tensor values, no loop over the batch, positions and the last real
token found from the mask (either padding side works), and token compression applied from index/weight tensors that
the host computes (rerank_runtime.compression), so no shape inside the graph depends on data.

Precision: every norm, the residual stream, the softmax, the rotary maths and the score heads run in fp32; only
Linear/Embedding weights (and the matmuls that use them) follow the dtype they are cast to. In fp32 this is exactly
FlagEmbedding's arithmetic; in fp16 it keeps Gemma's large activations (beyond fp16's largest value, 65504) finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NEG = torch.finfo(torch.float32).min


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    attn_scale: float
    embed_scale: float
    embed_scale_in_dtype: bool  # Gemma rounds sqrt(hidden) to the compute dtype; MiniCPM multiplies by scale_emb
    residual_scale: float  # MiniCPM: scale_depth / sqrt(num_layers); Gemma: 1
    norm_plus_one: bool  # Gemma: x * (1 + w); MiniCPM: x * w
    act: str  # "gelu_tanh" | "silu"
    post_norms: bool  # Gemma-2's four norms per block
    sliding_window: int | None  # Gemma-2: even layers attend to the last `sliding_window` tokens only


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, plus_one: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(size) if plus_one else torch.ones(size))
        self.eps, self.plus_one = eps, plus_one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        # x / sqrt(...) rather than HF's x * rsqrt(...) (equal within an ulp): exported as Pow, ReduceMean, Add, Sqrt,
        # Div, Mul, the pattern ONNX Runtime fuses into one SimplifiedLayerNormalization kernel on the CPU (rsqrt
        # exports as Reciprocal(Sqrt), which it does not match). Standard ops, so TensorRT parses it as before.
        x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        w = self.weight.float()
        return x * (1.0 + w) if self.plus_one else x * w


def _linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return module(x.to(module.weight.dtype))


def inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """The rotary inverse frequencies, computed eagerly by torch as the HF models do (and then stored, not traced):
    the exporter's constant folding computes theta ** x with numpy, one ulp off in some entries, and at position
    500 one ulp of a frequency turns the angle by 3e-5 rad, which moved a trained mid model's score by 2e-5."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rotary(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, S, D]
    return emb.cos(), emb.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return (xf * cos + rotated * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.q_proj = nn.Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x, cos, sin, bias):
        cfg = self.cfg
        b, s, _ = x.shape
        q = _linear(self.q_proj, x).view(b, s, cfg.num_heads, cfg.head_dim).transpose(1, 2)
        k = _linear(self.k_proj, x).view(b, s, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        v = _linear(self.v_proj, x).view(b, s, cfg.num_kv_heads, cfg.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        rep = cfg.num_heads // cfg.num_kv_heads
        if rep > 1:
            k = k[:, :, None].expand(b, cfg.num_kv_heads, rep, s, cfg.head_dim).reshape(b, cfg.num_heads, s, cfg.head_dim)
            v = v[:, :, None].expand(b, cfg.num_kv_heads, rep, s, cfg.head_dim).reshape(b, cfg.num_heads, s, cfg.head_dim)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() * cfg.attn_scale + bias
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        out = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, cfg.num_heads * cfg.head_dim)
        return _linear(self.o_proj, out).float()


class MLP(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = cfg.act

    def forward(self, x):
        gate = _linear(self.gate_proj, x)
        gate = F.gelu(gate, approximate="tanh") if self.act == "gelu_tanh" else F.silu(gate)
        return _linear(self.down_proj, gate * _linear(self.up_proj, x)).float()


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, index: int):
        super().__init__()
        self.cfg, self.index = cfg, index
        norm = lambda: RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one)  # noqa: E731
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        if cfg.post_norms:
            self.pre_feedforward_layernorm, self.post_feedforward_layernorm = norm(), norm()
        self.self_attn, self.mlp = Attention(cfg), MLP(cfg)

    @property
    def sliding(self) -> bool:
        return self.cfg.sliding_window is not None and self.index % 2 == 0

    def forward(self, h, cos, sin, bias):
        cfg = self.cfg
        attn = self.self_attn(self.input_layernorm(h), cos, sin, bias)
        if cfg.post_norms:
            h = h + self.post_attention_layernorm(attn)
            return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))
        h = h + attn * cfg.residual_scale
        return h + self.mlp(self.post_attention_layernorm(h)) * cfg.residual_scale


class DecoderModel(nn.Module):
    """`model.*` of the checkpoints: embeddings, layers and the final norm."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_plus_one)
        self.register_buffer("inv_freq", inverse_frequencies(cfg.head_dim, cfg.rope_theta), persistent=False)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        emb = self.embed_tokens(input_ids)
        if self.cfg.embed_scale_in_dtype:
            scale = torch.tensor(self.cfg.embed_scale, dtype=emb.dtype).float()
        else:
            scale = self.cfg.embed_scale
        return emb.float() * scale


def attention_inputs(mask: torch.Tensor, cfg: DecoderConfig, inv_freq: torch.Tensor):
    """Rotary tables and additive attention biases (full and sliding-window) for a [B, S] mask of 0/1.

    Positions count real tokens (cumsum of the mask), so left and right padding give the same positions to real
    tokens; with right padding this is FlagEmbedding's arange(S).
    """
    positions = (torch.cumsum(mask, dim=1) - 1).clamp(min=0)
    cos, sin = rotary(positions, inv_freq)
    s = mask.shape[1]
    idx = torch.arange(s, device=mask.device)
    causal = idx[None, :] <= idx[:, None]  # [S(query), S(key)]
    allowed = causal[None, None] & (mask[:, None, None, :] > 0)
    bias = torch.where(allowed, 0.0, NEG)
    window = None
    if cfg.sliding_window is not None:
        near = (idx[:, None] - idx[None, :]) < cfg.sliding_window
        window = torch.where(allowed & near[None, None], 0.0, NEG)
    return cos, sin, bias, window


def last_token(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h[b, last real position of row b] for either padding side: [B, H]."""
    s = mask.shape[1]
    last = torch.argmax(torch.arange(s, device=mask.device)[None, :] * mask, dim=1)
    return torch.gather(h, 1, last[:, None, None].expand(-1, 1, h.shape[-1])).squeeze(1)


def compress(h: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FlagEmbedding's token compression from a host-computed plan: new_h[b, j] = sum_t w[b,j,t] * h[b, idx[b,j,t]]."""
    b, s_new, r = index.shape
    flat = index.reshape(b, s_new * r)[..., None].expand(-1, -1, h.shape[-1])
    gathered = torch.gather(h, 1, flat).reshape(b, s_new, r, h.shape[-1])
    new_h = (gathered * weight[..., None].float()).sum(dim=2)
    new_mask = (weight.sum(dim=-1) > 0).to(torch.int64)
    return new_h, new_mask


def run_layers(model: DecoderModel, h, mask, start: int, stop: int):
    """Run layers [start, stop) on h; returns h."""
    cos, sin, bias, window = attention_inputs(mask, model.cfg, model.inv_freq)
    for layer in model.layers[start:stop]:
        h = layer(h, cos, sin, window if layer.sliding else bias)
    return h


def head_dot(state: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """state [B, H] . weight [H] in fp32: [B]."""
    return torch.matmul(state.float(), weight.float())


def scale_depth_factor(scale_depth: float, num_layers: int) -> float:
    return scale_depth / math.sqrt(num_layers)
