"""The request front: the one place a GraphRequest meets the graph a backend serves.

A backend (spec.Backend) only runs a graph on one device: `run(names, feeds)` with complete, typed feeds. Everything
between a compute_score call and that is here, once for every backend:
- `ServedGraph.check`: the request against what the graph serves (its exits, its baked compression), with an error
  that describes both and says how to export what the call needs;
- `ServedGraph.complete`: the feeds the graph takes from the feeds the host built: pass-through plans for baked
  compression stages past the request's deepest exit, dtype coercion to the graph's input types, refusal of missing
  inputs, and nothing the graph does not take;
- `GraphFront`: a ServedGraph and a Backend together, as the host side (scoring.Scorer) calls them;
- `RoundRobin`: several single-device backends behind one (one per device, taken in turn).
An export's ServedGraph comes from its manifest (`ServedGraph.of`); the PyTorch reference bakes one per request
(`ServedGraph.baked_for`), as `rerank-export` would.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .compression import effective, pass_through_stages, plan_inputs, served_stages
from .errors import ArtifactError, UnsupportedRequestError
from .hints import Remake, compression_message, exits_message
from .manifest import Manifest, TensorSpec
from .spec import TOKEN_INPUTS, Backend, Front, GraphRequest, exit_name

# manifest dtype -> numpy dtype of a feed (bfloat16 has no numpy dtype: such an input cannot be fed from the host)
NUMPY_DTYPES = {"int64": np.int64, "int32": np.int32, "float32": np.float32, "float16": np.float16,
                "float64": np.float64, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_}


@dataclass(frozen=True)
class ServedGraph:
    """What a backend's graph takes and gives: its inputs, its exits (one output each; none: the single "score"
    output), its baked compression, and, for messages, where it comes from and the checkpoint it was made of."""

    inputs: tuple[TensorSpec, ...]
    exits: tuple[tuple[int, int], ...]
    compress_ratio: int
    compress_layers: tuple[int, ...]
    where: str  # "the artifact in exports/x"
    source: str  # the checkpoint it was made of
    remake: Remake | None = None  # how an export was made: the export commands its errors print

    def __post_init__(self) -> None:
        unfed = [f"{t.name} ({t.dtype})" for t in self.inputs if t.dtype not in NUMPY_DTYPES]
        if unfed:
            raise ArtifactError(f"{self.where} has graph inputs {unfed} that the host cannot feed from numpy; "
                                "re-export it with `rerank-export` (graph inputs are int64 and float32)")

    @classmethod
    def of(cls, manifest: Manifest, export_dir: str | os.PathLike[str]) -> ServedGraph:
        """The graph an export serves, as its manifest records it."""
        return cls(manifest.graph.inputs, manifest.exits, manifest.compress_ratio, manifest.compress_layers,
                   f"the artifact in {export_dir}", manifest.source, Remake.of(manifest, export_dir))

    @classmethod
    def baked_for(cls, request: GraphRequest, where: str, source: str) -> ServedGraph:
        """The graph `rerank-export` would bake for exactly this request (the PyTorch reference builds it)."""
        stages = len(request.compress_layers) if request.compress_ratio > 1 else 0
        inputs = [TensorSpec(n, "int64", ("batch", "sequence")) for n in TOKEN_INPUTS]
        plan_shape = ("batch", "compressed", request.compress_ratio)
        inputs += [TensorSpec(n, "int64" if "index" in n else "float32", plan_shape) for n in plan_inputs(stages)]
        return cls(tuple(inputs), request.exits, request.compress_ratio if stages else 1,
                   request.compress_layers if stages else (), where, source)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(exit_name(layer, head) for layer, head in self.exits) if self.exits else ("score",)

    @property
    def stages(self) -> int:
        return len(self.compress_layers) if self.compress_ratio > 1 else 0

    def check(self, request: GraphRequest) -> None:
        """UnsupportedRequestError unless this graph has every output the request needs and bakes the compression
        stages it runs (a stage the request does not reach is filled with a pass-through plan by complete())."""
        wanted = effective(request.compress_ratio, request.compress_layers)
        if any(name not in self.output_names for name in request.output_names):
            raise UnsupportedRequestError(exits_message(self.where, self.exits, request.exits, wanted, self.remake))
        have = served_stages(self.compress_ratio, self.compress_layers, request.exits)
        if have != wanted:
            layers = sorted({layer for layer, _ in request.exits})
            raise UnsupportedRequestError(compression_message(
                self.where, (self.compress_ratio, self.compress_layers), wanted, layers, self.remake))

    def complete(self, request: GraphRequest, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Exactly the graph's inputs, in its dtypes, from the host's feeds for `request` (checked by check())."""
        planned = len(effective(request.compress_ratio, request.compress_layers)[1])
        if self.stages > planned:
            feeds = pass_through_stages(dict(feeds), planned, self.stages, self.compress_ratio)
        absent = [t.name for t in self.inputs if t.name not in feeds]
        if absent:
            raise UnsupportedRequestError(
                f"the graph of {self.where} takes inputs {absent} that the call's feeds lack (given: {sorted(feeds)}); "
                "a compression plan is missing for a stage the request runs")
        return {t.name: np.ascontiguousarray(feeds[t.name], dtype=NUMPY_DTYPES[t.dtype]) for t in self.inputs}


class GraphFront:
    """spec.Front over a backend: checks each request against the served graph, completes its feeds, runs it.

    Thread-safe when the backend is (every backend here is); `concurrency` is the backend's."""

    def __init__(self, graph: ServedGraph, backend: Backend) -> None:
        self.graph, self.backend = graph, backend
        self.concurrency = backend.concurrency

    def check(self, request: GraphRequest) -> None:
        self.graph.check(request)

    def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Raw float32 scores, one vector per request.output_names (the host checks their shapes)."""
        self.graph.check(request)
        outputs = self.backend.run(request.output_names, self.graph.complete(request, feeds))
        return [np.asarray(out, dtype=np.float32).reshape(-1) for out in outputs]


class RoundRobin:
    """Several single-device backends behind one Backend: each run() goes to the next in turn (thread-safe), and
    `concurrency` is their number, so the host keeps one batch in flight per device."""

    def __init__(self, backends: Sequence[Backend]) -> None:
        if not backends:
            raise ValueError("RoundRobin needs at least one backend")
        self.backends = tuple(backends)
        self.concurrency = len(self.backends)
        self._lock = threading.Lock()
        self._turn = 0

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            backend = self.backends[self._turn % self.concurrency]
            self._turn += 1
        return backend.run(names, feeds)


def one_backend(backends: Sequence[Backend]) -> Backend:
    """The backend itself, or a RoundRobin over several (one per device)."""
    return backends[0] if len(backends) == 1 else RoundRobin(backends)


def backends_of(backend: Backend) -> tuple[Backend, ...]:
    """The single-device backends behind `backend` (itself, or a RoundRobin's), for diagnostics."""
    return backend.backends if isinstance(backend, RoundRobin) else (backend,)


class FeedRecorder:
    """A spec.Front that keeps a copy of every (request, feeds) it is asked to run, then runs it on the front it
    wraps: the batches the host side builds, for the benchmarks' GPU check and profile and for the parity tests.
    Serve it with `Reranker.from_loaded(dataclasses.replace(loaded, front=FeedRecorder(loaded.front)))`."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.concurrency = front.concurrency
        self.calls: list[tuple[GraphRequest, dict[str, np.ndarray]]] = []
        self._lock = threading.Lock()

    def check(self, request: GraphRequest) -> None:
        self.front.check(request)

    def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self._lock:
            self.calls.append((request, {k: np.array(v, copy=True) for k, v in feeds.items()}))
        return self.front.run(request, feeds)

    def rows(self) -> list[list[int]]:
        """Every recorded row's token ids without padding (where its attention mask is 1), in the order run."""
        return [[int(t) for t, m in zip(ids, mask) if m] for _, feeds in self.calls
                for ids, mask in zip(feeds["input_ids"], feeds["attention_mask"])]
