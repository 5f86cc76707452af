"""What benchmarks/gpu_check.py measures, as pure functions over backends and score arrays.

- `compare`: a backend's scores against the fp32 PyTorch reference with the tolerance table (atol + rtol and
  Spearman, via bench_stats.parity_gate), top-10 identity, and no NaN/inf.
- `grid_feeds`: the real feeds of one compute_score call per (batch size, sequence length), made by the runtime's
  host code and kept by a rerank_runtime.front.FeedRecorder, so every backend times the same tensors.
- `time_calls`: p50/p99 of Backend.run() calls after a warm-up, measured with CUDA events recorded on the stream the
  backend computes on (host-to-device copies, compute and device-to-host copies of one call), or with the host clock
  where no stream is known; the JSON says which.
- `graph_replay_proof`: capture a CUDA graph with batch A, replay it on a different batch B of the same shape, and
  require the scores of a plain run on B.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rerank_runtime.front import FeedRecorder

from bench_stats import Gate, parity_gate, percentile, top_k

TOP_K = 10


def compare(got: np.ndarray, ref: np.ndarray, tolerance: Any) -> dict[str, Any]:
    """got/ref: [n_exits, n] scores. Passed when every exit is finite, within atol + rtol|ref|, ranks with Spearman
    >= min_spearman and has the reference's top-10 pairs (as a set) at the top."""
    got, ref = np.atleast_2d(np.asarray(got, np.float64)), np.atleast_2d(np.asarray(ref, np.float64))
    gate = Gate(tolerance.atol, tolerance.rtol, tolerance.min_spearman)
    rows, problems = [], []
    for i, (g, r) in enumerate(zip(got, ref)):
        result = parity_gate(g, r, gate)
        k = min(TOP_K, r.size)
        top = top_k(g, r, k)
        same_set = top["same_set"]
        rows.append({**result.to_dict(), "top10_same_set": same_set, "top10_same_order": top["same_order"],
                     "score_std": float(np.std(r))})
        if not result.passed:
            problems.append(f"exit {i}: {result.message}")
        if not same_set:
            problems.append(f"exit {i}: the top {k} pairs differ from the reference's")
    if got.shape != ref.shape:
        problems.append(f"shape {got.shape} vs the reference's {ref.shape}")
    return {"passed": not problems, "problems": problems, "exits": rows,
            "tolerance": {"atol": tolerance.atol, "rtol": tolerance.rtol, "min_spearman": tolerance.min_spearman},
            "max_abs_diff": max((r["max_abs_diff"] for r in rows), default=0.0),
            "spearman": min((r["spearman"] for r in rows), default=1.0)}


def grid_feeds(score: Callable[[list[list[str]], int, int], object], recorder: FeedRecorder,
               pairs_a: list[list[str]], pairs_b: list[list[str]], batches: Sequence[int],
               lengths: Sequence[int]) -> dict[tuple[int, int], tuple[Any, list[dict]]]:
    """(batch, length) -> (request, [feeds A, feeds B]): two batches of the same shapes and different tokens.

    pairs_b must have pairs_a's queries with other passages, all long enough to be cut at every length, so that every
    input (token compression plans included) has the same shape in A and B. score(pairs, batch_size, max_length)
    runs one compute_score call through `recorder`.
    """
    out: dict[tuple[int, int], tuple[Any, list[dict]]] = {}
    for length in lengths:
        for batch in batches:
            feeds = []
            for pairs in (pairs_a, pairs_b):
                recorder.calls.clear()
                score(pairs[:batch], batch, length)
                [(request, f)] = recorder.calls  # one call of `batch` pairs is one batch
                feeds.append(f)
            shapes = [{k: v.shape for k, v in f.items()} for f in feeds]
            if shapes[0] != shapes[1]:
                raise ValueError(f"batches A and B at {batch} x {length} differ in shape ({shapes[0]} vs "
                                 f"{shapes[1]}); give B A's queries and passages long enough to be cut at {length}")
            out[(batch, length)] = (request, feeds)
    return out


class EventTimer:
    """Milliseconds of one call, from CUDA events recorded on `stream` before and after it (cuda: a CudaRuntime)."""

    kind = "cuda-events"

    def __init__(self, cuda: Any, stream: int) -> None:
        self.cuda, self.stream = cuda, stream
        self.start, self.end = cuda.event_create(), cuda.event_create()

    def __call__(self, fn: Callable[[], object]) -> float:
        self.cuda.event_record(self.start, self.stream)
        fn()
        self.cuda.event_record(self.end, self.stream)
        return float(self.cuda.elapsed_ms(self.start, self.end))

    def close(self) -> None:
        for event in (self.start, self.end):
            self.cuda.event_destroy(event)


class HostTimer:
    kind = "host-clock"

    def __call__(self, fn: Callable[[], object]) -> float:
        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) * 1e3

    def close(self) -> None:
        pass


def time_calls(run: Callable[[], object], timer: Any, warmup: int, iters: int, batch: int) -> dict[str, Any]:
    for _ in range(warmup):
        run()
    samples = [timer(run) for _ in range(iters)]
    p50 = percentile(samples, 50)
    return {"p50_ms": p50, "p99_ms": percentile(samples, 99), "min_ms": min(samples), "calls": iters,
            "pairs_per_s": batch / (p50 / 1e3) if p50 > 0 else None, "timer": timer.kind}


def graph_replay_proof(graphs: Any, plain: Any, names: Sequence[str], feeds_a: dict, feeds_b: dict) -> dict[str, Any]:
    """graphs: a backend with CUDA graphs on (its first run of a shape captures, the next replays); plain: the same
    engine without; feeds: complete (front.ServedGraph.complete). Passed when the replay on B equals a plain run on B
    (within the plain runs' own run-to-run spread, 0 for a deterministic engine), differs from A's scores, and
    nothing was captured again."""
    scores_a = np.stack(graphs.run(names, feeds_a))
    captured = graphs.captured_shapes()
    replay_b = np.stack(graphs.run(names, feeds_b))
    plain_b, again_b = np.stack(plain.run(names, feeds_b)), np.stack(plain.run(names, feeds_b))
    spread, diff = float(np.abs(plain_b - again_b).max()), float(np.abs(replay_b - plain_b).max())
    problems = []
    if len(captured) != 1 or graphs.captured_shapes() != captured:
        problems.append(f"expected one graph captured once, held {captured} then {graphs.captured_shapes()}")
    if not np.isfinite(replay_b).all():
        problems.append("the replay gave non-finite scores")
    if diff > spread:
        problems.append(f"the replay on B differs from a plain run on B by {diff:.3g} (plain runs differ by "
                        f"{spread:.3g})")
    if np.array_equal(replay_b, scores_a):
        problems.append("the replay on B returned A's scores: the graph did not read the new inputs")
    return {"passed": not problems, "problems": problems, "max_diff_vs_plain": diff, "plain_spread": spread,
            "shape": list(feeds_b["input_ids"].shape)}
