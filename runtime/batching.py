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


# What one more batch costs, in padded tokens: ONNX Runtime runs a batch of n tokens less efficiently than part of a
# larger one (fixed per-run work, smaller matmuls), so cutting a batch to save less padding than this loses time.
# Chosen from A/B runs on the mid models, 2 threads (benchmarks/README.md, "No padding").
BATCH_OVERHEAD_TOKENS = 512


def plan_batches(
    order: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    max_batch_tokens: int | None = None,
    multiple: int | None = None,
    overhead: int | None = None,
) -> list[np.ndarray]:
    """Cut `order` (sorted by descending length key) into consecutive batches of at most batch_size rows.

    None: FlagEmbedding's behaviour (slices of batch_size). With max_batch_tokens, the cut points are chosen to
    minimise the tokens fed (rows x padded length, summed over the batches) plus `overhead` per batch (default
    BATCH_OVERHEAD_TOKENS), with every batch
    within batch_size rows and max_batch_tokens padded tokens (a single row longer than the budget still forms a batch
    of its own: it cannot be split): padding is cut wherever lengths spread, without shrinking batches where they
    do not.
    """
    if max_batch_tokens is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    widths = np.array([padded_length(int(n), multiple) for n in np.asarray(lengths)[order]], dtype=np.int64)
    per_batch = BATCH_OVERHEAD_TOKENS if overhead is None else overhead
    return [order[lo:hi] for lo, hi in _cheapest_cuts(widths, batch_size, max_batch_tokens, per_batch)]


def _cheapest_cuts(widths: np.ndarray, batch_size: int, budget: int, overhead: int) -> list[tuple[int, int]]:
    """Dynamic programme over the rows in order: best[j] is the least cost of batching rows [0, j); a batch [i, j)
    costs (j - i) * max(widths[i:j]) + overhead. Returns the [lo, hi) ranges in order."""
    n = len(widths)
    best = np.zeros(n + 1, dtype=np.float64)
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        rows_cap = min(batch_size, max(1, budget // max(1, int(widths[j - 1]))))  # row j-1 alone fixes a floor width
        lo = np.arange(max(0, j - rows_cap), j)
        width = np.maximum.accumulate(widths[lo][::-1])[::-1]  # width[k]: the widest row of [lo[k], j)
        rows = j - lo
        cost = best[lo] + rows * width + overhead
        cost[(rows * width > budget) & (rows > 1)] = np.inf
        k = int(np.argmin(cost))
        best[j], start[j] = cost[k], lo[k]
    cuts: list[tuple[int, int]] = []
    j = n
    while j > 0:
        cuts.append((int(start[j]), j))
        j = int(start[j])
    return cuts[::-1]


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
