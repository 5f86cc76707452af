"""The host-side compression plan against a transcription of FlagEmbedding's token_compress (docs/flagembedding-behaviour.md, Token
compression)."""

from __future__ import annotations

import numpy as np
import pytest

from compression_twin import apply_plan, plan_mask
from rerank_runtime.compression import build_plan, real_lengths, stage_plan
from rerank_runtime.errors import UnsupportedRequestError


def token_compress_ref(
    r: int, h: np.ndarray, mask: np.ndarray, ql: np.ndarray, pl: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """numpy transcription of FlagEmbedding 1.4.2 gemma_model.token_compress, boolean-mask steps kept as they are."""
    b, s, _ = h.shape
    p_len = mask.sum(1) - ql - pl
    retain = (p_len + r - 1) // r
    final = ql + pl + retain
    max_p, s2 = int(p_len.max()), int(final.max())
    new_h = np.zeros((b, s2, h.shape[-1]), h.dtype)
    new_mask = np.ones((b, s2), np.int64)
    new_mask[np.arange(s2)[None] >= final[:, None]] = 0
    query_idx = np.arange(s2)[None] < ql[:, None]
    new_h[query_idx] = h[:, :s2][query_idx]
    new_prompt = (np.arange(s2)[None] >= (ql + retain)[:, None]) & (np.arange(s2)[None] < (ql + retain + pl)[:, None])
    raw_prompt = (np.arange(s)[None] >= (ql + p_len)[:, None]) & (np.arange(s)[None] < (ql + p_len + pl)[:, None])
    new_h[new_prompt] = h[raw_prompt]
    raw_psg = (np.arange(s)[None] >= ql[:, None]) & (np.arange(s)[None] < (ql + p_len)[:, None])
    h = h * raw_psg[..., None]
    width = (max_p + r - 1) // r * r
    buf = np.zeros((b, width, h.shape[-1]), h.dtype)
    buf_mask = np.arange(width)[None] < p_len[:, None]
    buf[buf_mask] = h[raw_psg]
    weights = np.zeros((b, width), h.dtype)
    weights[buf_mask] = 1
    weights = weights.reshape(b, -1, r)
    with np.errstate(invalid="ignore", divide="ignore"):
        weights = (weights / weights.sum(-1).reshape(b, -1, 1)).reshape(b, -1)
        pooled = (buf * weights[..., None]).reshape(b, -1, r, h.shape[-1]).sum(2)
    new_psg = (np.arange(s2)[None] >= ql[:, None]) & (np.arange(s2)[None] < (ql + retain)[:, None])
    new_h[new_psg] = pooled[np.arange(pooled.shape[1])[None] < retain[:, None]]
    return new_h, new_mask


def make_batch(r: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows whose passage lengths take every value mod r (plus 0 and 1), with varied query/prompt spans."""
    rng = np.random.default_rng(seed)
    p_lens = [0, 1] + [2 * r + m for m in range(r)] + [3 * r + m for m in range(r)]
    ql = rng.integers(1, 6, len(p_lens))
    pl = rng.integers(1, 5, len(p_lens))
    n = ql + np.array(p_lens) + pl
    width = int(n.max()) + 3
    mask = (np.arange(width)[None] < n[:, None]).astype(np.int64)
    h = rng.standard_normal((len(p_lens), width, 4)).astype(np.float32)
    return h, mask, ql.astype(np.int64), pl.astype(np.int64)


@pytest.mark.parametrize("r", [2, 3, 4])
def test_one_stage_matches_token_compress(r: int) -> None:
    h, mask, ql, pl = make_batch(r, seed=r)
    feeds = build_plan(mask, ql, pl, r, stages=1)
    index, weight = feeds["compress_index_0"], feeds["compress_weight_0"]
    want_h, want_mask = token_compress_ref(r, h, mask, ql, pl)
    assert index.dtype == np.int64 and weight.dtype == np.float32
    assert index.shape == weight.shape == (h.shape[0], want_h.shape[1], r)
    np.testing.assert_array_equal(plan_mask(weight), want_mask)
    np.testing.assert_allclose(apply_plan(h, index, weight), want_h, rtol=0, atol=1e-6)
    # partial groups average their real members only: a row with p = 2r + 1 ends on a one-member group
    row = int(np.argmax((mask.sum(1) - ql - pl) == 2 * r + 1))
    last = int(ql[row]) + 2
    assert np.count_nonzero(weight[row, last]) == 1 and weight[row, last, 0] == 1.0


@pytest.mark.parametrize("r", [2, 3, 4])
def test_two_stages_compound(r: int) -> None:
    h, mask, ql, pl = make_batch(r, seed=10 + r)
    feeds = build_plan(mask, ql, pl, r, stages=2)
    assert set(feeds) == {"compress_index_0", "compress_weight_0", "compress_index_1", "compress_weight_1"}
    h1, m1 = token_compress_ref(r, h, mask, ql, pl)
    h2, m2 = token_compress_ref(r, h1, m1, ql, pl)
    got1 = apply_plan(h, feeds["compress_index_0"], feeds["compress_weight_0"])
    got2 = apply_plan(got1, feeds["compress_index_1"], feeds["compress_weight_1"])
    assert feeds["compress_index_1"].max() < got1.shape[1]  # stage 1 indexes stage 0's output
    np.testing.assert_array_equal(plan_mask(feeds["compress_weight_1"]), m2)
    np.testing.assert_allclose(got2, h2, rtol=0, atol=1e-6)
    assert got2.shape[1] < got1.shape[1] < h.shape[1]


def test_hand_computed_plan() -> None:
    # ql = 2, passage of 5 tokens at 2..6, pl = 1 (token 7); r = 2 -> groups (2,3) (4,5) (6)
    index, weight, new_n = stage_plan(np.array([8]), np.array([2]), np.array([1]), 2)
    assert new_n.tolist() == [6]
    assert index[0].tolist() == [[0, 0], [1, 0], [2, 3], [4, 5], [6, 0], [7, 0]]
    assert weight[0].tolist() == [[1, 0], [1, 0], [0.5, 0.5], [0.5, 0.5], [1, 0], [1, 0]]


def test_weights_are_float32_reciprocals() -> None:
    _, weight, _ = stage_plan(np.array([9]), np.array([1]), np.array([1]), 3)  # p = 7: groups of 3, 3, 1
    assert weight[0, 1, 0] == np.float32(1) / np.float32(3)
    assert weight[0, 3].tolist() == [1.0, 0.0, 0.0]


def test_shorter_rows_are_zero_past_their_end() -> None:
    index, weight, new_n = stage_plan(np.array([10, 4]), np.array([2, 2]), np.array([1, 1]), 2)
    assert new_n.tolist() == [7, 4]
    assert weight.shape[1] == 7 and not weight[1, 4:].any()


def test_left_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="right-padded"):
        real_lengths(np.array([[0, 1, 1], [1, 1, 1]]))


def test_spans_longer_than_row_are_refused() -> None:
    with pytest.raises(UnsupportedRequestError, match="row 1"):
        stage_plan(np.array([10, 3]), np.array([2, 2]), np.array([1, 2]), 2)
