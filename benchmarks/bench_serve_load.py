"""Bounded loopback load against a rerank server, every response checked against offline scores.

A scenario is `clients` concurrent clients, each sending `requests_per_client` requests of 1 query x `docs` documents
one after the other (asyncio + httpx, one connection per client). Every answer is compared with compute_score's raw
score of each of its pairs; an error status, a connection error or a missing document counts as lost, a score
outside the fp32 tolerance as mismatched. Servers run as subprocesses on 127.0.0.1 and are stopped with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_stats import percentile

Request = tuple[str, list[str]]  # (query, documents)


@dataclass(frozen=True)
class Api:
    """How one server spells a rerank request and its raw-score answer."""

    path: str
    body: Callable[[Request], dict[str, Any]]
    scores: Callable[[Any], dict[int, float]]  # response JSON -> {document index: raw score}


TEI_RAW = Api("/rerank", lambda r: {"query": r[0], "texts": r[1], "raw_scores": True},
              lambda body: {x["index"]: x["score"] for x in body})


# Infinity's /rerank: a Cohere-like body; raw_scores asks for logits rather than its sigmoid.
INFINITY_MODEL = "bench-model"
INFINITY_API = Api("/rerank", lambda r: {"model": INFINITY_MODEL, "query": r[0], "documents": r[1], "raw_scores": True},
                   lambda body: {x["index"]: x["relevance_score"] for x in body["results"]})


def make_requests(pool: list[list[str]], clients: int, docs: int, per_client: int, seed: int) -> list[list[Request]]:
    """Each client's requests: a query from the pool and `docs` passages drawn from the pool's length mix."""
    rng = random.Random(seed * 7919 + clients * 131 + docs)
    out = []
    for _ in range(clients):
        reqs = []
        for _ in range(per_client):
            picks = [pool[rng.randrange(len(pool))] for _ in range(docs)]
            reqs.append((picks[0][0], [p for _, p in picks]))
        out.append(reqs)
    return out


def judge(got: dict[int, float], want: list[float], atol: float, rtol: float) -> str:
    """ok, lost (a document without a score) or mismatched (a score beyond atol + rtol * |want|)."""
    if sorted(got) != list(range(len(want))):
        return "lost"
    bad = any(abs(got[i] - w) > atol + rtol * abs(w) for i, w in enumerate(want))
    return "mismatched" if bad else "ok"


async def _load(url: str, api: Api, plan: list[list[Request]], expected: Callable[[Request], list[float]],
                tolerance: tuple[float, float], timeout: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    statuses: Counter[str] = Counter()

    async def client(requests: list[Request]) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as http:
            for request in requests:
                start = time.perf_counter()
                try:
                    response = await http.post(api.path, json=api.body(request))
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                    outcomes["lost"] += 1
                    continue
                latencies.append(time.perf_counter() - start)
                statuses[str(response.status_code)] += 1
                if response.status_code != 200:
                    outcomes["lost"] += 1
                    continue
                outcomes[judge(api.scores(response.json()), expected(request), *tolerance)] += 1

    start = time.perf_counter()
    await asyncio.gather(*(client(reqs) for reqs in plan))
    wall = time.perf_counter() - start
    pairs = sum(len(docs) for reqs in plan for _, docs in reqs)
    summary = {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
               "p99": percentile(latencies, 99)} if latencies else {}
    return {"requests": sum(len(r) for r in plan), "pairs": pairs, "wall_s": wall, "pairs_per_s": pairs / wall,
            "latency_s": summary, "ok": outcomes["ok"], "lost": outcomes["lost"],
            "mismatched": outcomes["mismatched"], "statuses": dict(statuses)}


def run_load(url: str, api: Api, plan: list[list[Request]], expected: Callable[[Request], list[float]],
             tolerance: tuple[float, float], timeout: float = 600.0) -> dict[str, Any]:
    return asyncio.run(_load(url, api, plan, expected, tolerance, timeout))


# --- servers as subprocesses ---------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A server subprocess on 127.0.0.1; `ready_path` answers 200 once it can serve. Output goes to `log`."""

    def __init__(self, name: str, argv: list[str], port: int, ready_path: str, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name, self.argv, self.port, self.ready_path, self.log = name, argv, port, ready_path, log
        self.env = {**os.environ, **(env or {})}
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600.0) -> None:
        import httpx

        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready; "
                                   f"last output:\n{self.log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready after {timeout:.0f} s; see {self.log}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)


def rerank_serve(export_dir: Path, log: Path, *extra: str) -> ServerProcess:
    port = free_port()
    argv = [sys.executable, "-m", "rerank_serve.cli", str(export_dir), "--port", str(port), "--log-level", "warning",
            *extra]
    return ServerProcess("rerank-serve", argv, port, "/ready", log)


def infinity(python: Path, checkpoint: Path, work: Path, log: Path) -> ServerProcess:
    """Infinity serving the same generated checkpoint (torch engine, CPU), from its own environment.

    It reads a view of the checkpoint (the weights linked, not copied) whose tokenizer_config caps model_max_length
    at the position table (max_position_embeddings - 2, as the real XLM-R checkpoints say: 512): the generated
    checkpoints declare 514, and Infinity, which truncates at the tokenizer's model_max_length, would index past the
    position table."""
    view = work / f"infinity-{checkpoint.name}"
    view.mkdir(parents=True, exist_ok=True)
    for item in checkpoint.iterdir():
        if item.name != "tokenizer_config.json" and not (view / item.name).exists():
            (view / item.name).symlink_to(item.resolve())
    tokenizer_config = json.loads((checkpoint / "tokenizer_config.json").read_text())
    positions = json.loads((checkpoint / "config.json").read_text()).get("max_position_embeddings", 514)
    tokenizer_config["model_max_length"] = min(tokenizer_config.get("model_max_length", positions), positions - 2)
    (view / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    port = free_port()
    argv = [str(python.parent / "infinity_emb"), "v2", "--model-id", str(view), "--served-model-name", INFINITY_MODEL,
            "--port", str(port), "--host", "127.0.0.1", "--engine", "torch", "--device", "cpu",
            "--no-bettertransformer"]
    return ServerProcess("infinity", argv, port, "/health", log, env={"HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
                                                                      "INFINITY_ANONYMOUS_USAGE_STATS": "0"})
