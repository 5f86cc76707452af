"""XLMRobertaForSequenceClassification in plain torch, with the checkpoint's parameter names.

Post-LN BERT blocks; the score is classifier.out_proj(tanh(classifier.dense(h[:, 0]))) at the <s> position.
LayerNorm, softmax and the residual stream run in fp32; Linear weights may be cast (see decoder.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NEG = torch.finfo(torch.float32).min


@dataclass(frozen=True)
class EncoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    pad_token_id: int
    num_labels: int


def _linear(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return module(x.to(module.weight.dtype)).float()


def _norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), module.normalized_shape, module.weight.float(), module.bias.float(), module.eps)


class _Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)


class _Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _Dense(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)


class _Intermediate(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)


class Layer(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _Dense(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = h.shape
        nh = self.cfg.num_heads
        hd = d // nh
        sa = self.attention.self

        def heads(lin):
            return lin(h.to(lin.weight.dtype)).view(b, s, nh, hd).transpose(1, 2)

        q, k, v = heads(sa.query), heads(sa.key), heads(sa.value)
        scores = torch.matmul(q, k.transpose(-1, -2)).float() / (hd**0.5) + bias
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        ctx = torch.matmul(probs, v).transpose(1, 2).reshape(b, s, d)
        out = self.attention.output
        h = _norm(out.LayerNorm, _linear(out.dense, ctx) + h)
        inter = F.gelu(_linear(self.intermediate.dense, h))
        return _norm(self.output.LayerNorm, _linear(self.output.dense, inter) + h)


class _Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


class _Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))


class _Roberta(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.embeddings = _Embeddings(cfg)
        self.encoder = _Encoder(cfg)


class _Classifier(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.num_labels)


class XLMRobertaClassifier(nn.Module):
    """Scores [B] for input_ids/attention_mask [B, S]; right padding (the <s> token must be at index 0)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.roberta = _Roberta(cfg)
        self.classifier = _Classifier(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        cfg, emb = self.cfg, self.roberta.embeddings
        real = (input_ids != cfg.pad_token_id).to(torch.int64)
        positions = torch.cumsum(real, dim=1) * real + cfg.pad_token_id
        h = (
            emb.word_embeddings(input_ids).float()
            + emb.position_embeddings(positions).float()
            + emb.token_type_embeddings(torch.zeros_like(input_ids)).float()
        )
        h = _norm(emb.LayerNorm, h)
        bias = torch.where(attention_mask[:, None, None, :] > 0, 0.0, NEG)
        for layer in self.roberta.encoder.layer:
            h = layer(h, bias)
        x = torch.tanh(_linear(self.classifier.dense, h[:, 0]))
        return _linear(self.classifier.out_proj, x).reshape(-1)
