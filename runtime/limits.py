"""How long a request may be, checked before anything runs: the export's max_length (what it was sized and verified
for) and the model's position table (ModelSpec.max_positions). Beyond the positions an encoder fails inside the
graph (XLM-R: 514 position embeddings serve 512 tokens) and a decoder's memory grows quadratically."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LengthLimitError
from .hints import DEFAULT_MAX_LENGTH, warn_user


def default_max_length(export_max_length: int | None, where: str) -> int:
    """max_length when the constructor was given none: FlagEmbedding's 512, or the export's own max_length when that
    is smaller (an export made with `rerank-export --max-length 256` cannot serve 512). Deliberate change: one
    warning says so, because such an export cuts pairs shorter than FlagEmbedding's default would; passing
    max_length explicitly silences it, and a value beyond the export's still raises LengthLimitError."""
    if export_max_length is None or export_max_length >= DEFAULT_MAX_LENGTH:
        return DEFAULT_MAX_LENGTH
    warn_user(f"max_length defaults to {export_max_length} for {where}: it was exported with --max-length "
              f"{export_max_length}, below FlagEmbedding's default {DEFAULT_MAX_LENGTH}, so pairs are cut at "
              f"{export_max_length} tokens; pass max_length={export_max_length} to say so (and silence this warning), "
              f"or re-export with --max-length {DEFAULT_MAX_LENGTH} for FlagEmbedding's default")
    return export_max_length


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
