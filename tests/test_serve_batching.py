"""rerank-serve's scheduler and error paths, end to end over HTTP, with a real runtime reranker over a gated fake Backend.

The backend holds its worker until the test opens a gate, so which requests are pending, merged, dropped or refused
is decided by the test, never by timing: cross-request merging, per-request NaN isolation, disconnects, the queue
limit, /ready before warm-up.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from serve_util import NAN_CHAR, GatedBackend, ServerThread, gated_reranker, wait_for

pytest.importorskip("starlette", reason="the serve extra is not installed")

from rerank_serve.app import create_app  # noqa: E402
from rerank_serve.model import Model  # noqa: E402
from rerank_serve.scheduler import LocalEngine  # noqa: E402
from rerank_serve.settings import ServeSettings  # noqa: E402


def serve_fake(backend: GatedBackend, **limits: Any) -> tuple[ServerThread, Any]:
    reranker = gated_reranker(backend, max_batch_tokens=4096)
    settings = ServeSettings(export_dir="<fake>", **limits)
    model = Model(reranker, "fake-encoder")
    app = create_app(settings, lambda metrics: LocalEngine.start(lambda: model, settings, metrics))
    return ServerThread(app), reranker


def post_in_thread(url: str, body: dict[str, Any], out: dict[str, Any], key: str, timeout: float = 60.0,
                   path: str = "/rerank") -> threading.Thread:
    def go() -> None:
        try:
            out[key] = httpx.post(url + path, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            out[key] = exc

    thread = threading.Thread(target=go)
    thread.start()
    return thread


def hold_worker(server: ServerThread, backend: GatedBackend, out: dict[str, Any]) -> threading.Thread:
    """Close the gate and send one request that occupies the (only) worker until the gate opens."""
    backend.gate.clear()
    backend.entered.clear()
    thread = post_in_thread(server.url, {"query": "q", "texts": ["blocker"]}, out, "blocker")
    assert backend.entered.wait(30), "the blocking request never reached the backend"
    return thread


class Held:
    """A fake-backend server whose only worker is held by a blocking request until `release()`."""

    def __init__(self, server: ServerThread, backend: GatedBackend, reranker: Any) -> None:
        self.server, self.backend, self.reranker = server, backend, reranker
        self.out: dict[str, Any] = {}
        self.threads = [hold_worker(server, backend, self.out)]

    def post(self, key: str, body: dict[str, Any], timeout: float = 60.0, path: str = "/rerank") -> threading.Thread:
        thread = post_in_thread(self.server.url, body, self.out, key, timeout, path)
        self.threads.append(thread)
        return thread

    def release(self) -> None:
        self.backend.gate.set()
        for thread in self.threads:
            thread.join(60)


@contextlib.contextmanager
def held(**limits: Any) -> Iterator[Held]:
    backend = GatedBackend()
    server, reranker = serve_fake(backend, **limits)
    with server:
        server.wait_ready()
        yield Held(server, backend, reranker)


def raw_scores(response: httpx.Response) -> dict[int, float]:
    assert response.status_code == 200, response.text
    return {r["index"]: r["score"] for r in response.json()}


@pytest.mark.parametrize("merge", [True, False])
def test_pending_requests_are_merged_into_one_runtime_call_and_routed_back(merge):
    with held(cross_request_batching=merge) as h:
        queries = [f"query {i}" for i in range(8)]
        for i, q in enumerate(queries):
            h.post(q, {"query": q, "texts": [f"doc {i}", "shared"], "raw_scores": True})
        wait_for(lambda: h.server.metric("rerank_queue_pairs") == 16, what="16 pairs pending")
        runs_before = len(h.backend.batches)
        h.release()
        if merge:
            assert h.backend.batches[runs_before:] == [1, 16]  # the blocker, then all 8 requests in one call
        else:
            assert h.backend.batches[runs_before:] == [1] + [2] * 8  # one call per request
        for i, q in enumerate(queries):
            want = h.reranker.compute_score_array([(q, f"doc {i}"), (q, "shared")])
            got = raw_scores(h.out[q])
            assert [got[0], got[1]] == pytest.approx(want.tolist(), abs=1e-6)
        assert h.server.metric("rerank_batch_pairs_sum") >= 16


def test_a_nan_fails_only_its_own_request_and_names_the_document():
    with held() as h:
        h.post("bad", {"query": "q", "texts": ["fine", f"bro{NAN_CHAR}ken", "also fine"]})
        h.post("good", {"query": "q", "texts": ["good", "better"], "raw_scores": True})
        wait_for(lambda: h.server.metric("rerank_queue_pairs") == 5, what="both requests pending")
        h.release()
        assert h.backend.batches[-1] == 5  # one runtime call held both requests
        assert h.out["bad"].status_code == 500
        body = h.out["bad"].json()
        assert body["error_type"] == "backend" and "`texts[1]`" in body["error"] and "non-finite" in body["error"]
        assert set(body) == {"error", "error_type"}
        want = h.reranker.compute_score_array([("q", "good"), ("q", "better")])
        got = raw_scores(h.out["good"])
        assert [got[0], got[1]] == pytest.approx(want.tolist(), abs=1e-6)
        assert h.server.metric("rerank_requests_total", {"route": "/rerank", "status": "500"}) == 1


def test_a_client_that_disconnects_has_its_pending_pairs_dropped():
    with held() as h:
        h.post("leaver", {"query": "q", "texts": ["a", "b", "c"]}, timeout=0.5).join(30)
        assert isinstance(h.out["leaver"], httpx.ReadTimeout)  # the client gave up and closed its connection
        wait_for(lambda: h.server.metric("rerank_pairs_dropped_total") == 3, what="the 3 pairs to be dropped")
        assert h.server.metric("rerank_queue_pairs") == 0
        rows_before = sum(h.backend.batches)
        h.release()
        assert h.out["blocker"].status_code == 200
        assert sum(h.backend.batches) == rows_before + 1  # only the blocker's pair ever reached the model
        wait_for(lambda: h.server.metric("rerank_requests_total", {"route": "/rerank", "status": "499"}) == 1,
                 what="the disconnect to be recorded as 499")


def test_a_full_queue_answers_429_with_retry_after():
    with held(max_queue=5) as h:
        h.post("waiting", {"query": "q", "texts": ["a", "b", "c", "d"]})
        wait_for(lambda: h.server.metric("rerank_queue_pairs") == 4, what="4 pairs pending")
        refused = httpx.post(h.server.url + "/rerank", json={"query": "q", "texts": ["e", "f"]}, timeout=30)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error_type"] == "overloaded" and "--max-queue" in refused.json()["error"]
        h.release()
        assert h.out["waiting"].status_code == 200 and len(h.out["waiting"].json()) == 4


def test_ready_is_503_until_the_warm_up_batch_has_run():
    backend = GatedBackend()
    backend.gate.clear()  # the warm-up batch waits
    server, _ = serve_fake(backend)
    with server:
        assert backend.entered.wait(30)
        assert httpx.get(server.url + "/health").status_code == 200
        ready = httpx.get(server.url + "/ready")
        assert ready.status_code == 503 and ready.json()["error_type"] == "unhealthy"
        early = httpx.post(server.url + "/rerank", json={"query": "q", "texts": ["a"]})
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert httpx.get(server.url + "/info").status_code == 503
        backend.gate.set()
        server.wait_ready(30)
        assert httpx.post(server.url + "/rerank", json={"query": "q", "texts": ["a"]}).status_code == 200


def test_several_groups_of_options_are_scored_apart():
    """Requests whose options change scores (here max_length via Cohere v2's max_tokens_per_doc) never share a call."""
    with held() as h:
        body = {"model": "m", "query": "a query", "documents": ["a rather long document text"]}
        h.post("cut", {**body, "max_tokens_per_doc": 12}, path="/v2/rerank")
        h.post("full", body, path="/v2/rerank")
        wait_for(lambda: h.server.metric("rerank_queue_pairs") == 2, what="both requests pending")
        h.release()
        assert h.backend.batches[-2:] == [1, 1]
        pair = [("a query", "a rather long document text")]
        scores = {key: h.out[key].json()["results"][0]["relevance_score"] for key in ("cut", "full")}
        for key, max_length in (("cut", 12), ("full", 512)):
            want = h.reranker.compute_score_array(pair, max_length=max_length, normalize=True)
            assert scores[key] == pytest.approx(float(want[0]), abs=1e-12)
        assert scores["cut"] != scores["full"]


def test_scheduler_close_runs_what_is_pending_then_stops():
    """The drain: close() sends pending pairs at once (no waiting for the batch window) and waits for them."""
    import asyncio

    from rerank_serve.metrics import Metrics
    from rerank_serve.scheduler import Scheduler
    from rerank_serve.schemas import TEI, RankRequest

    backend = GatedBackend()
    model = Model(gated_reranker(backend), "fake")

    async def scenario() -> list[np.ndarray]:
        scheduler = Scheduler(model, max_batch_tokens=10**6, max_wait_ms=60_000, max_queue=100, metrics=Metrics())
        jobs = [model.prepare(RankRequest(TEI, "q", (f"doc {i}",))) for i in range(3)]
        pending = [asyncio.ensure_future(scheduler.score(job)) for job in jobs]
        await asyncio.sleep(0.05)
        assert not backend.batches  # a 60 s window: nothing ran yet
        await scheduler.close()
        return [await p for p in pending]

    results = asyncio.run(scenario())
    assert backend.batches == [3]
    assert [r.shape for r in results] == [(1,)] * 3


def test_a_failed_dispatcher_fails_requests_loudly_instead_of_hanging_them(monkeypatch):
    import asyncio

    from rerank_serve.metrics import Metrics
    from rerank_serve.scheduler import Scheduler
    from rerank_serve.schemas import TEI, RankRequest, ServeError

    model = Model(gated_reranker(GatedBackend()), "fake")

    def broken_take(self, key):
        raise RuntimeError("a bug in batch assembly")

    monkeypatch.setattr(Scheduler, "_take", broken_take)

    async def scenario() -> tuple[str, str]:
        scheduler = Scheduler(model, max_batch_tokens=1000, max_wait_ms=0, max_queue=100, metrics=Metrics())
        job = model.prepare(RankRequest(TEI, "q", ("doc",)))
        with pytest.raises(ServeError) as pending:
            await asyncio.wait_for(scheduler.score(job), 30)
        with pytest.raises(ServeError) as later:
            await scheduler.score(job)
        return pending.value.message, later.value.message

    first, second = asyncio.run(scenario())
    assert "RuntimeError: a bug in batch assembly" in first and first == second
