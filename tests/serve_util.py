"""Helpers of the serve tests: a free loopback port, an in-thread uvicorn server, a gated fake Backend."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from char_tokenizer import VOCAB, char_tokenizer

from rerank_runtime.rerankers import FlagReranker
from rerank_runtime.spec import ENCODER, GraphRequest, Loaded, ModelSpec

NAN_CHAR = "!"  # the gated backend scores a row holding this character as NaN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy, at most `timeout` seconds (then fail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a thread; a context manager."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan="on",
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_for(lambda: self.server.started, what="uvicorn to start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        wait_for(lambda: httpx.get(self.url + "/ready").status_code == 200, timeout, "/ready to answer 200")

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.app.state.metrics.value(name, labels) or 0.0


class GatedBackend:
    """A fake graph: score = sum of the row's real ids / 100, NaN where the row holds NAN_CHAR. run() waits for
    `gate` (set by default) and records each batch's row count, so tests can hold the worker and see batches."""

    concurrency = 1

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def check(self, request: GraphRequest) -> None:
        pass

    def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.entered.set()
        assert self.gate.wait(60), "the test never opened the gate"
        ids, mask = feeds["input_ids"], feeds["attention_mask"]
        scores = ((ids * mask).sum(axis=1) / 100).astype(np.float32)
        scores[((ids == VOCAB[NAN_CHAR]) & (mask == 1)).any(axis=1)] = np.nan
        self.batches.append(len(ids))
        return [scores for _ in request.output_names]


def gated_reranker(backend: GatedBackend, **settings: Any) -> FlagReranker:
    spec = ModelSpec(ENCODER, pad_token_id=1, pair_prefix=(0,), pair_middle=(2, 2), pair_suffix=(2,))
    return FlagReranker.from_loaded(Loaded(spec, char_tokenizer(), backend), **settings)
