"""The lightweight reranker's token compression, planned on the host (docs/flagembedding-behaviour.md, Token
compression).

FlagEmbedding's `token_compress` replaces the passage span of each row by means of consecutive groups of r tokens
(a partial last group is averaged over its real members), keeps the query span (BOS, query, first newline) and the
prompt span (second newline, prompt), and left-aligns the result. Its output length depends on the data, which a graph
cannot express cheaply, so the host computes, per stage k, a gather plan:

    new_h[b, j] = sum_t compress_weight_k[b, j, t] * h[b, compress_index_k[b, j, t]]

with index int64 [B, S_k, r] into the previous stage's sequence axis (stage 0 indexes the input) and weight float32.
Rows shorter than S_k get all-zero weights past their end; a position is real iff its weights sum to > 0.
Weights are np.float32(1) / np.float32(count): exactly FlagEmbedding's fp32 weights (in fp16/bf16 FlagEmbedding
rounds them to that dtype; the graph may cast).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import UnsupportedRequestError


def plan_inputs(stages: int) -> tuple[str, ...]:
    """The graph inputs of `stages` compression stages: compress_index_k, compress_weight_k for k < stages."""
    return tuple(f"compress_{role}_{k}" for k in range(stages) for role in ("index", "weight"))


def real_lengths(mask: np.ndarray) -> np.ndarray:
    """Per-row real length of a right-padded [B, S] mask; left or gappy padding is an error (as in FlagEmbedding)."""
    mask = np.asarray(mask)
    n = mask.sum(axis=1).astype(np.int64)
    expected = np.arange(mask.shape[1])[None, :] < n[:, None]
    if not np.array_equal(mask != 0, expected):
        raise ValueError("token compression needs a right-padded attention mask (ones, then zeros) in every row")
    return n


def stage_plan(
    lengths: np.ndarray, query_lengths: np.ndarray, prompt_lengths: np.ndarray, ratio: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One compression stage: (index [B, S', r] int64, weight [B, S', r] float32, new lengths [B])."""
    n = np.asarray(lengths, dtype=np.int64)[:, None]
    ql = np.asarray(query_lengths, dtype=np.int64)[:, None]
    pl = np.asarray(prompt_lengths, dtype=np.int64)[:, None]
    p = n - ql - pl
    if (p < 0).any():
        row = int(np.argmax(p[:, 0] < 0))
        raise UnsupportedRequestError(
            f"row {row}: query span {int(ql[row, 0])} + prompt span {int(pl[row, 0])} exceed its {int(n[row, 0])} "
            "tokens (the passage was truncated into the separator); lower query_max_length so that the query fits"
        )
    rp = -(-p // ratio)
    new_n = ql + rp + pl
    width = int(new_n.max()) if len(new_n) else 0
    j = np.arange(width, dtype=np.int64)[None, :]
    index = np.zeros((len(n), width, ratio), dtype=np.int64)
    weight = np.zeros((len(n), width, ratio), dtype=np.float32)
    copy_query = j < ql
    copy_prompt = (j >= ql + rp) & (j < new_n)
    index[..., 0] = np.where(copy_query, j, np.where(copy_prompt, ql + p + (j - ql - rp), 0))
    weight[..., 0] = (copy_query | copy_prompt).astype(np.float32)
    _fill_groups(index, weight, j, ql, p, rp, ratio)
    return index, weight, new_n[:, 0]


def _fill_groups(
    index: np.ndarray, weight: np.ndarray, j: np.ndarray, ql: np.ndarray, p: np.ndarray, rp: np.ndarray, ratio: int
) -> None:
    """Passage slots ql <= j < ql + rp: mean of old tokens ql + g*r .. min(ql + (g+1)*r, ql + p) - 1."""
    in_passage = (j >= ql) & (j < ql + rp)
    group = j - ql
    count = np.where(in_passage, np.clip(p - group * ratio, 0, ratio), 0)
    t = np.arange(ratio, dtype=np.int64)[None, None, :]
    member = in_passage[..., None] & (t < count[..., None])
    inv = np.divide(np.float32(1), count.astype(np.float32), out=np.zeros(count.shape, np.float32), where=count > 0)
    index[...] = np.where(member, (ql + group * ratio)[..., None] + t, index)
    weight[...] = np.where(member, inv[..., None], weight)


def build_plan(
    attention_mask: np.ndarray,
    query_lengths: np.ndarray,
    prompt_lengths: np.ndarray,
    ratio: int,
    stages: int,
) -> dict[str, np.ndarray]:
    """Feeds compress_index_{k} / compress_weight_{k} for k < stages, compounding (stage k+1 uses stage k's lengths)."""
    if ratio < 2 and stages:
        raise ValueError(f"a compression plan needs ratio >= 2, got {ratio}")
    lengths = real_lengths(attention_mask)
    feeds: dict[str, np.ndarray] = {}
    for k in range(stages):
        index, weight, lengths = stage_plan(lengths, query_lengths, prompt_lengths, ratio)
        feeds[f"compress_index_{k}"] = index
        feeds[f"compress_weight_{k}"] = weight
    return feeds


def effective(ratio: int, stages: Iterable[int]) -> tuple[int, tuple[int, ...]]:
    """(ratio, stages ascending) of a compression that runs; no stage that runs means no compression, whatever the
    ratio, so both canonicalise to (1, ()). The one place this rule lives."""
    running = tuple(sorted(set(stages)))
    return (ratio, running) if ratio > 1 and running else (1, ())


def served_stages(baked_ratio: int, baked_layers: tuple[int, ...], exits: tuple[tuple[int, int], ...]
                  ) -> tuple[int, tuple[int, ...]]:
    """The (ratio, stages) a call for `exits` must ask for on a graph with these baked stages.

    A stage before layer c only changes exits deeper than c (an exit at c is captured before it), so a call whose
    deepest exit is d needs exactly the baked stages below d; the graph's later stages get pass-through plans.
    """
    deepest = max((layer for layer, _ in exits), default=None)
    return effective(baked_ratio, (c for c in baked_layers if deepest is None or c < deepest))


def pass_through_stages(feeds: dict[str, np.ndarray], planned: int, stages: int, ratio: int) -> dict[str, np.ndarray]:
    """Feeds with plans for the graph's stages `planned`..`stages`-1, which the call did not plan: keep every token.

    The call plans exactly the stages below its deepest exit (served_stages); the later ones lie past it, so their
    output is never read. A missing plan below `planned` is left missing, for the backend to refuse.
    """
    out = dict(feeds)
    for k in range(planned, stages):
        if k > 0 and f"compress_weight_{k - 1}" not in out:
            break
        prev = out["attention_mask"] if k == 0 else out[f"compress_weight_{k - 1}"].sum(axis=-1)
        b, s = prev.shape
        index = np.zeros((b, s, ratio), dtype=np.int64)
        index[..., 0] = np.arange(s)
        weight = np.zeros((b, s, ratio), dtype=np.float32)
        weight[..., 0] = prev != 0
        out[f"compress_index_{k}"], out[f"compress_weight_{k}"] = index, weight
    return out
