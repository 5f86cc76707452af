"""How long a request may be, checked before anything runs: the export's max_length (what it was sized and verified
for) and the model's position table (ModelSpec.max_positions). Beyond the positions an encoder fails inside the
graph (XLM-R: 514 position embeddings serve 512 tokens) and a decoder's memory grows quadratically."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LengthLimitError


@dataclass(frozen=True)
class Limits:
    max_positions: int | None  # the model's position table; None where unknown
    export_max_length: int | None  # the export's max_length; None for a checkpoint (the PyTorch reference)

    def describe(self) -> str:
        parts = []
        if self.export_max_length is not None:
            parts.append(f"this export was sized and verified for max_length {self.export_max_length} "
                         "(rerank-export --max-length)")
        if self.max_positions is not None:
            parts.append(f"the model's position table serves {self.max_positions} tokens")
        return " and ".join(parts)

    def check_settings(self, **lengths: int) -> None:
        """max_length=..., query_max_length=...: LengthLimitError for a value beyond either limit, saying both."""
        bounds = [b for b in (self.export_max_length, self.max_positions) if b is not None]
        if not bounds:
            return
        bound = min(bounds)
        for name, value in lengths.items():
            if value > bound:
                more = ""
                if self.export_max_length == bound and self.max_positions is not None and self.max_positions > bound:
                    more = f", or re-export with a larger --max-length (up to {self.max_positions})"
                raise LengthLimitError(f"{name}={value} is more than this model serves: {self.describe()}; pass "
                                       f"{name} <= {bound}{more}")

    def check_rows(self, lengths: np.ndarray, offset: int) -> None:
        """LengthLimitError naming the first pair (offset + i) whose token sequence is beyond the position table."""
        if self.max_positions is None:
            return
        over = np.flatnonzero(lengths > self.max_positions)
        if over.size:
            i = int(over[0])
            raise LengthLimitError(
                f"sentence_pairs[{offset + i}] makes a sequence of {int(lengths[i])} tokens, more than the "
                f"{self.max_positions} the model's position table serves; lower query_max_length (a query longer "
                "than max_length is left untruncated, as Hugging Face does) or shorten the prompt",
                index=offset + i,
            )
