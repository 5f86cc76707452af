"""The host side of compute_score: validate input, tokenise, sort, batch, pad, run the front, restore order.

The same code serves every backend (ONNX Runtime, TensorRT, the PyTorch reference) through its front (spec.Front), so
a parity failure between them is a graph problem, never a host problem.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from .batching import chunk_bounds, pad_rows, plan_batches, sort_order
from .compression import build_plan
from .errors import ManifestMismatchError, NonFiniteScoreError
from .kinds import Kind, padding_side
from .layout import EncodedChunk, Instructions, LayoutSettings, PairEncoder, check_text
from .limits import Limits
from .spec import Front, GraphRequest, ModelSpec

Pair = tuple[str, str]


def parse_pairs(sentence_pairs: Any) -> tuple[list[Pair], bool]:
    """(pairs, single). A single pair is a list/tuple of two whose first element is a str (FlagEmbedding's rule)."""
    if not isinstance(sentence_pairs, (list, tuple)):
        raise TypeError(
            "sentence_pairs must be a [query, passage] pair or a list of such pairs, "
            f"got {type(sentence_pairs).__name__}: {sentence_pairs!r:.80}"
        )
    items: Sequence[Any] = sentence_pairs
    if len(items) and isinstance(items[0], str):
        return [_check_pair(items, 0, single=True)], True
    return [_check_pair(item, i) for i, item in enumerate(items)], False


def _check_pair(item: Any, index: int, single: bool = False) -> Pair:
    where = "sentence_pairs" if single else f"sentence_pairs[{index}]"
    if not isinstance(item, (list, tuple)):
        raise TypeError(f"{where} must be a [query, passage] list or tuple of two str, got {type(item).__name__}")
    pair: Sequence[Any] = item
    if len(pair) != 2:
        raise ValueError(f"{where} must hold exactly two str (query, passage), got {len(pair)} elements")
    for pos, name in ((0, "query"), (1, "passage")):
        if not isinstance(pair[pos], str):
            raise TypeError(f"{where}[{pos}] (the {name}) must be a str, got {type(pair[pos]).__name__}")
        check_text(f"{where}[{pos}] (the {name})", pair[pos], index)
    return pair[0], pair[1]


NON_FINITE_POLICIES = ("raise", "nan")


def check_non_finite(policy: Any) -> str:
    if policy not in NON_FINITE_POLICIES:
        raise ValueError(f"non_finite must be one of {list(NON_FINITE_POLICIES)}, got {policy!r}")
    return policy


def apply_non_finite(scores: np.ndarray, names: Sequence[str], policy: str) -> np.ndarray:
    """Raw scores [n_outputs, n_pairs] with no NaN or inf, or NonFiniteScoreError naming the first pair that has one.

    policy "nan" is the explicit opt-in: every non-finite score becomes NaN (never inf, and never a sigmoid's 1.0).
    """
    bad = ~np.isfinite(scores)
    if not bad.any():
        return scores
    if policy == "nan":
        return np.where(bad, np.float32(np.nan), scores)
    index = int(np.flatnonzero(bad.any(axis=0))[0])
    row = int(np.flatnonzero(bad[:, index])[0])
    value = float(scores[row, index])
    raise NonFiniteScoreError(
        f"the model scored sentence_pairs[{index}] as {value} (graph output {names[row]!r}); a non-finite score is "
        "never returned silently. An fp16 export that overflows is the usual cause: use an fp32 or bf16 export, or "
        "pass non_finite='nan' to get NaN for such pairs",
        index=index, value=value, output=names[row],
    )


def sigmoid(x: np.ndarray) -> np.ndarray:
    """FlagEmbedding's normalize: 1 / (1 + exp(-x)) in float64."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@dataclass(frozen=True)
class CallPlan:
    """Everything one compute_score call needs, resolved from call, instance and model defaults."""

    request: GraphRequest
    layout: LayoutSettings
    batch_size: int
    max_batch_tokens: int | None = None
    chunk_size: int = 8192
    limits: Limits = Limits(None, None)


class Scorer:
    """Scores pairs with one model. Holds no per-call state, so concurrent calls from several threads are safe."""

    def __init__(
        self, spec: ModelSpec, kind: Kind, tokenizer: Tokenizer, front: Front, instructions: Instructions
    ) -> None:
        self.spec = spec
        self.kind = kind
        self.tokenizer = tokenizer
        self.front = front
        self.instructions = instructions

    def score(self, pairs: Sequence[Pair], plan: CallPlan, progress: Callable[[int], object] | None = None
              ) -> np.ndarray:
        """Raw float32 scores [n_outputs, n_pairs] in input order, one row per plan.request.output_names.

        progress(n) is called with each batch's row count as its scores arrive."""
        self.front.check(plan.request)
        names = plan.request.output_names
        out = np.empty((len(names), len(pairs)), dtype=np.float32)
        encoder = PairEncoder(self.spec, self.kind, self.tokenizer, plan.layout)
        with _Runner(self.front, plan.request, out, progress) as runner:
            for lo, chunk in self._chunks(encoder, pairs, plan.chunk_size):
                lengths = np.array([len(row) for row in chunk.ids], dtype=np.int64)
                plan.limits.check_rows(lengths, lo)
                order = sort_order(chunk.keys)
                for batch in plan_batches(
                    order, lengths, plan.batch_size, plan.max_batch_tokens, self.kind.pad_multiple
                ):
                    runner.submit(self._feeds(chunk, batch, plan.request), lo + batch)
        return out

    def encode(self, pairs: Sequence[Pair], layout: LayoutSettings) -> EncodedChunk:
        """The ids of these pairs under these layout settings, as score() feeds them (before padding)."""
        return self._encode(PairEncoder(self.spec, self.kind, self.tokenizer, layout), pairs)

    def _encode(self, encoder: PairEncoder, pairs: Sequence[Pair]) -> EncodedChunk:
        queries, passages = self.instructions.apply([p[0] for p in pairs], [p[1] for p in pairs])
        return encoder.encode(queries, passages)

    def _chunks(self, encoder: PairEncoder, pairs: Sequence[Pair], size: int) -> Iterator[tuple[int, EncodedChunk]]:
        """(offset, encoded chunk) in input order; the next chunk is tokenised in the background meanwhile."""
        bounds = list(chunk_bounds(len(pairs), size))
        if len(bounds) <= 1:
            yield from ((lo, self._encode(encoder, pairs[lo:hi])) for lo, hi in bounds)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="rerank-tokenize") as pool:
            ahead = pool.submit(self._encode, encoder, pairs[bounds[0][0] : bounds[0][1]])
            for i, (lo, _) in enumerate(bounds):
                chunk = ahead.result()
                if i + 1 < len(bounds):
                    ahead = pool.submit(self._encode, encoder, pairs[bounds[i + 1][0] : bounds[i + 1][1]])
                yield lo, chunk

    def _feeds(self, chunk: EncodedChunk, batch: np.ndarray, request: GraphRequest) -> dict[str, np.ndarray]:
        rows = [chunk.ids[i] for i in batch]
        side = padding_side(self.kind, self.spec)
        input_ids, mask = pad_rows(rows, self.spec.pad_token_id, side, self.kind.pad_multiple)
        feeds = {"input_ids": input_ids, "attention_mask": mask}
        if request.compress_layers:
            if chunk.query_lengths is None or chunk.prompt_lengths is None:
                raise ValueError(f"compression needs query/prompt spans, which {self.kind.class_name} does not have")
            feeds.update(
                build_plan(
                    mask,
                    chunk.query_lengths[batch],
                    chunk.prompt_lengths[batch],
                    request.compress_ratio,
                    len(request.compress_layers),
                )
            )
        return feeds


class _Runner:
    """Runs batches inline, or keeps up to `front.concurrency` of them in flight on a per-call thread pool."""

    def __init__(self, front: Front, request: GraphRequest, out: np.ndarray,
                 progress: Callable[[int], object] | None = None) -> None:
        self.front = front
        self.progress = progress
        self.request = request
        self.out = out
        self.width = max(1, front.concurrency)
        self.pool = ThreadPoolExecutor(self.width, thread_name_prefix="rerank") if self.width > 1 else None
        self.pending: deque[tuple[Future[list[np.ndarray]], np.ndarray]] = deque()

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                while self.pending:
                    self._collect()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, feeds: dict[str, np.ndarray], dest: np.ndarray) -> None:
        if self.pool is None:
            self._store(self.front.run(self.request, feeds), dest)
            return
        while len(self.pending) >= self.width:
            self._collect()
        self.pending.append((self.pool.submit(self.front.run, self.request, feeds), dest))

    def _collect(self) -> None:
        future, dest = self.pending.popleft()
        self._store(future.result(), dest)

    def _store(self, outputs: list[np.ndarray], dest: np.ndarray) -> None:
        names, rows = self.request.output_names, len(dest)
        if len(outputs) != len(names):
            raise ManifestMismatchError(
                f"the graph returned {len(outputs)} outputs for {list(names)}; the contract is one per name"
            )
        for k, (name, values) in enumerate(zip(names, outputs)):
            arr = np.asarray(values)
            if arr.shape != (rows,):
                raise ManifestMismatchError(
                    f"output {name!r} has shape {arr.shape} for a batch of {rows} rows; expected ({rows},) raw scores"
                )
            self.out[k, dest] = arr.astype(np.float32)
        if self.progress is not None:
            self.progress(rows)
