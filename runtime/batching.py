"""Sorting, batching and padding, as FlagEmbedding does them (docs/flagembedding-behaviour.md, Sorting and batches).

Pairs are sorted by descending length key with `np.argsort(-keys)` (numpy's default, unstable kind, exactly as
FlagEmbedding calls it, so ties fall the same way on the same numpy build), cut into consecutive batches, and the
scores are put back in input order.

Streaming: the scorer works through the input in chunks (8192 pairs by default) so that a million pairs never exist
as a million id lists at once; sorting and batching happen within a chunk. For inputs longer than one chunk the batch
composition therefore differs from FlagEmbedding's (which sorts the whole input). Each row's score depends only on that
row, so this changes scores by float rounding at most (padding amounts differ), like FlagEmbedding's own multi-device
path. Set chunk_size >= len(pairs) to batch exactly as FlagEmbedding does.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np


def sort_order(keys: np.ndarray) -> np.ndarray:
    """Indices by descending key: FlagEmbedding's `np.argsort([-len ...])` on int64 keys."""
    return np.argsort(-np.asarray(keys, dtype=np.int64))


def padded_length(length: int, multiple: int | None) -> int:
    if multiple is None or multiple <= 1:
        return length
    return -(-length // multiple) * multiple


def plan_batches(
    order: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    max_batch_tokens: int | None = None,
    multiple: int | None = None,
) -> list[np.ndarray]:
    """Cut `order` into consecutive batches of at most batch_size rows.

    With max_batch_tokens, a batch also stops growing when rows x padded length would exceed the budget (a single
    row longer than the budget still forms a batch of its own: it cannot be split). None is FlagEmbedding's behaviour.
    """
    if max_batch_tokens is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    for pos in range(len(order)):
        length = int(lengths[order[pos]])
        grown = max(longest, length)
        rows = pos - start
        if rows and (rows >= batch_size or (rows + 1) * padded_length(grown, multiple) > max_batch_tokens):
            batches.append(order[start:pos])
            start, grown = pos, length
        longest = grown
    if start < len(order):
        batches.append(order[start:])
    return batches


def pad_rows(
    rows: Sequence[Sequence[int]], pad_id: int, side: str, multiple: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """input_ids and attention_mask, int64 [B, S], padded to the longest row (rounded up to `multiple`)."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side must be 'left' or 'right', got {side!r}")
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    width = padded_length(int(lengths.max(initial=0)), multiple)
    cols = np.arange(width)[None, :]
    real = cols < lengths[:, None] if side == "right" else cols >= width - lengths[:, None]
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    ids[real] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
    return ids, real.astype(np.int64)


def chunk_bounds(n: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """[lo, hi) ranges that cover range(n) in order."""
    for lo in range(0, n, chunk_size):
        yield lo, min(lo + chunk_size, n)
