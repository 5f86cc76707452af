"""Score wrappers: the graph contract of the decoder families.

`DecoderScorer.forward(input_ids, attention_mask, *plan) -> one [B] score per exit`. An exit (layer L, head row w)
scores FinalNorm(state after L layers)[last real token] . w; the state is captured before any compression scheduled
at that same layer (FlagEmbedding's order). `plan` holds (compress_index_k, compress_weight_k) for each stage.
"""

from __future__ import annotations

import torch
from torch import nn

from .decoder import DecoderModel, compress, head_dot, last_token, run_layers


class DecoderScorer(nn.Module):
    def __init__(self, model: DecoderModel, exits: list[tuple[int, torch.Tensor]], stages: tuple[int, ...] = (),
                 softcap: float | None = None, trainable: bool = False):
        """trainable: keep the head rows attached to the weights they come from, so that a loss on the scores trains
        the heads too (rerank_export.testing.training); a scorer for export or inference copies them."""
        super().__init__()
        self.model = model
        self.exit_layers = [layer for layer, _ in exits]
        rows = torch.stack([w.float().reshape(-1) for _, w in exits])
        self.register_buffer("head_rows", rows if trainable else rows.detach())
        self.stages = tuple(stages)
        self.softcap = softcap
        bad = [s for s in self.stages if not 0 < s < max(self.exit_layers)]
        if bad:
            raise ValueError(f"compression stages {bad} are not between 0 and the deepest exit {max(self.exit_layers)}")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *plan: torch.Tensor):
        h, mask = self.model.embed(input_ids), attention_mask
        scores: list[torch.Tensor | None] = [None] * len(self.exit_layers)
        done = 0
        for stop in sorted(set(self.exit_layers) | set(self.stages)):
            h = run_layers(self.model, h, mask, done, stop)
            done = stop
            for i, layer in enumerate(self.exit_layers):
                if layer == stop:
                    scores[i] = self._score(h, mask, i)
            if stop in self.stages:
                k = self.stages.index(stop)
                h, mask = compress(h, plan[2 * k], plan[2 * k + 1])
        return tuple(scores)

    def _score(self, h: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
        s = head_dot(self.model.norm(last_token(h, mask)), self.head_rows[i])
        if self.softcap is not None:
            s = torch.tanh(s / self.softcap) * self.softcap
        return s


class SingleScore(nn.Module):
    """Adapts a one-exit scorer to the single-output contract (`score`)."""

    def __init__(self, scorer: nn.Module):
        super().__init__()
        self.scorer = scorer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.scorer(input_ids, attention_mask)
        return out[0] if isinstance(out, tuple) else out
