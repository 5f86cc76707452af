"""Prometheus series of one server process (its own registry, so several apps in one process never mix)."""

from __future__ import annotations

from typing import Any

from rerank_runtime._deps import require

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PAIRS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_TOKENS = (64, 256, 1024, 4096, 8192, 16384, 32768, 65536, 262144)


class Metrics:
    """rerank_requests_total{route,status}, rerank_request_duration_seconds{route}, rerank_queue_wait_seconds,
    rerank_batch_pairs, rerank_batch_tokens, rerank_pairs_scored_total, rerank_pairs_dropped_total,
    rerank_requests_in_flight, rerank_queue_pairs."""

    def __init__(self) -> None:
        prom = require("prometheus_client")
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter("rerank_requests", "Requests by route and HTTP status", ["route", "status"],
                                     registry=r)
        self.latency = prom.Histogram("rerank_request_duration_seconds", "Request latency, body read to response",
                                      ["route"], buckets=_LATENCY, registry=r)
        self.queue_wait = prom.Histogram("rerank_queue_wait_seconds", "Time a request's pairs waited for a batch",
                                         buckets=_LATENCY, registry=r)
        self.batch_pairs = prom.Histogram("rerank_batch_pairs", "Pairs per runtime call (merged across requests)",
                                          buckets=_PAIRS, registry=r)
        self.batch_tokens = prom.Histogram("rerank_batch_tokens", "Tokens per runtime call (merged across requests)",
                                           buckets=_TOKENS, registry=r)
        self.pairs_scored = prom.Counter("rerank_pairs_scored", "Pairs scored by the model", registry=r)
        self.pairs_dropped = prom.Counter("rerank_pairs_dropped", "Pairs dropped unscored: their client disconnected",
                                          registry=r)
        self.inflight = prom.Gauge("rerank_requests_in_flight", "Rerank requests being served", registry=r)
        self.queue_pairs = prom.Gauge("rerank_queue_pairs", "Pairs waiting for a batch", registry=r)

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST

    def observe_batch(self, pairs: int, tokens: int, waits: list[float]) -> None:
        self.batch_pairs.observe(pairs)
        self.batch_tokens.observe(tokens)
        for wait in waits:
            self.queue_wait.observe(wait)

    def value(self, name: str, labels: dict[str, str] | None = None) -> Any:
        """A sample's current value (for tests and the benchmark): e.g. value("rerank_pairs_dropped_total")."""
        return self.registry.get_sample_value(name, labels or {})
