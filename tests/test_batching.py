"""Sorting, batch cutting, token budgets, padding and chunking (docs/flagembedding-behaviour.md, Sorting and batches)."""

from __future__ import annotations

import numpy as np
import pytest

from rerank_runtime.batching import chunk_bounds, pad_rows, padded_length, plan_batches, sort_order


def test_sort_order_is_flagembeddings_argsort_including_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        keys = rng.integers(0, 6, size=int(rng.integers(1, 40)))
        flag = np.argsort([-int(k) for k in keys])  # FlagEmbedding's expression, on a list of python ints
        np.testing.assert_array_equal(sort_order(keys), flag)
        assert np.all(np.diff(keys[sort_order(keys)]) <= 0)


def test_batches_without_budget_are_consecutive_slices() -> None:
    order = np.array([4, 0, 3, 1, 2])
    batches = plan_batches(order, np.ones(5, np.int64), batch_size=2)
    assert [b.tolist() for b in batches] == [[4, 0], [3, 1], [2]]


def _cost(batches: list[np.ndarray], lengths: np.ndarray, multiple: int | None, overhead: int) -> int:
    return sum(len(b) * padded_length(int(lengths[b].max()), multiple) + overhead for b in batches)


def _brute_force(widths: list[int], batch_size: int, budget: int, overhead: int) -> int:
    """The least cost over every way of cutting the rows into consecutive batches (2^(n-1) ways)."""
    n, best = len(widths), None
    for mask in range(2 ** (n - 1)):
        cuts = [0] + [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        parts = [widths[lo:hi] for lo, hi in zip(cuts, cuts[1:])]
        if any(len(p) > batch_size or (len(p) > 1 and len(p) * max(p) > budget) for p in parts):
            continue
        cost = sum(len(p) * max(p) + overhead for p in parts)
        best = cost if best is None else min(best, cost)
    assert best is not None
    return best


def test_token_budget_bounds_padded_batch_size_and_keeps_the_order() -> None:
    lengths = np.array([30, 17, 17, 9, 9, 9, 9, 1])
    order = sort_order(lengths)
    batches = plan_batches(order, lengths, batch_size=100, max_batch_tokens=64, multiple=8, overhead=0)
    for batch in batches:
        width = padded_length(int(lengths[batch].max()), 8)
        assert len(batch) * width <= 64 or len(batch) == 1
    assert np.array_equal(np.concatenate(batches), order)


def test_budgeted_cuts_are_the_cheapest_consecutive_cuts() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        lengths = rng.integers(1, 60, size=int(rng.integers(1, 11)))
        batch_size, budget, overhead = int(rng.integers(1, 6)), int(rng.integers(40, 200)), int(rng.integers(0, 50))
        multiple = [None, 8][int(rng.integers(0, 2))]
        order = sort_order(lengths)
        batches = plan_batches(order, lengths, batch_size, budget, multiple, overhead)
        assert np.array_equal(np.concatenate(batches), order)
        widths = [padded_length(int(n), multiple) for n in lengths[order]]
        assert _cost(batches, lengths, multiple, overhead) == _brute_force(widths, batch_size, budget, overhead)


def test_padding_is_cut_where_lengths_spread_and_kept_where_a_batch_costs_more() -> None:
    lengths = np.array([64] * 4 + [8] * 4)
    order = sort_order(lengths)
    split = plan_batches(order, lengths, batch_size=8, max_batch_tokens=10_000, overhead=16)
    assert [lengths[b].tolist() for b in split] == [[64] * 4, [8] * 4]  # 256 + 32 + 2 x 16 < 8 x 64 + 16
    whole = plan_batches(order, lengths, batch_size=8, max_batch_tokens=10_000, overhead=1_000)
    assert [len(b) for b in whole] == [8]


def test_token_budget_still_respects_batch_size_and_lone_long_rows() -> None:
    lengths = np.array([100, 5, 5, 5, 5])
    batches = plan_batches(sort_order(lengths), lengths, batch_size=3, max_batch_tokens=50)
    assert lengths[batches[0]].tolist() == [100]
    assert sorted(len(b) for b in batches[1:]) == [1, 3]


def test_pad_right_and_left() -> None:
    rows = [[5, 6, 7], [8]]
    ids, mask = pad_rows(rows, pad_id=1, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 1, 1]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_rows(rows, pad_id=0, side="left", multiple=8)
    assert ids.shape == (2, 8) and ids.dtype == mask.dtype == np.int64
    assert ids[1].tolist() == [0] * 7 + [8] and mask[0].tolist() == [0] * 5 + [1, 1, 1]


def test_pad_to_multiple_rounds_up_only_when_needed() -> None:
    assert pad_rows([[1] * 8], 0, "right", 8)[0].shape == (1, 8)
    assert pad_rows([[1] * 9], 0, "right", 8)[0].shape == (1, 16)
    assert pad_rows([[1] * 9], 0, "right", None)[0].shape == (1, 9)


def test_pad_rejects_unknown_side() -> None:
    with pytest.raises(ValueError, match="left' or 'right"):
        pad_rows([[1]], 0, "middle")


def test_chunk_bounds_cover_the_input() -> None:
    assert list(chunk_bounds(10, 4)) == [(0, 4), (4, 8), (8, 10)]
    assert list(chunk_bounds(0, 4)) == []
