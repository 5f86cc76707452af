"""rerank-serve --ray on a local Ray instance (2 model replicas on CPU), started through the real CLI.

The same answers as the embedded server; one model replica killed during bounded load is replaced, and every request
gets either its correct answer or a retriable 503 (both counted: none lost, none wrong); SIGTERM exits 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_util import ServerThread, free_port, wait_for

pytest.importorskip("starlette", reason="the serve extra is not installed")
pytest.importorskip("ray.serve", reason="the ray extra is not installed")
cohere = pytest.importorskip("cohere")

from rerank_runtime import FlagAutoReranker  # noqa: E402
from rerank_serve.app import create_app  # noqa: E402
from rerank_serve.model import load  # noqa: E402
from rerank_serve.ray_app import MODEL  # noqa: E402
from rerank_serve.scheduler import LocalEngine  # noqa: E402
from rerank_serve.settings import ServeSettings  # noqa: E402

QUERIES = [f"query number {i}" for i in range(6)]
DOCS = [[f"document {j} for {q}" for j in range(1 + 7 * i)] for i, q in enumerate(QUERIES)]  # 1 to 36 documents
CLIENTS, REQUESTS_PER_CLIENT, LOAD_SECONDS = 4, 30, 90.0


@pytest.fixture(scope="module")
def ray_server(exported, tmp_path_factory):
    export_dir = exported("xlm_roberta")
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rerank_serve.cli", str(export_dir), "--ray", "--replicas", "2",
                                 "--cpus-per-replica", "0.5", "--port", str(port), "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _started(log) or _died(proc, log), 240, "Ray Serve to start")
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "export": export_dir, "log": log}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()


def _started(log: Path) -> str | None:
    return next((line for line in log.read_text().splitlines() if line.startswith("rerank-serve: 2 replica(s)")), None)


def _died(proc: subprocess.Popen, log: Path) -> None:
    if proc.poll() is not None:
        raise AssertionError(f"rerank-serve --ray exited with {proc.returncode}:\n{log.read_text()[-3000:]}")


def _model_replicas(root: int) -> list[int]:
    """PIDs of the live model replica processes under the server process (Ray titles them ray::ServeReplica:...)."""
    parents, titles = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                titles[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue

    def under_root(pid: int) -> bool:
        while pid > 1:
            if pid == root:
                return True
            pid = parents.get(pid, 0)
        return False

    return sorted(p for p, t in titles.items() if t.startswith(f"ray::ServeReplica:rerank:{MODEL}") and under_root(p))


def _without_ids(body: Any) -> Any:
    return {k: v for k, v in body.items() if k != "id"} if isinstance(body, dict) else body


def test_same_answers_as_the_embedded_server(ray_server):
    settings = ServeSettings(export_dir=str(ray_server["export"]))
    app = create_app(settings, lambda metrics: LocalEngine.start(lambda: load(settings), settings, metrics))
    with ServerThread(app) as embedded:
        embedded.wait_ready()
        for route, body in (("/rerank", {"query": QUERIES[0], "texts": DOCS[3], "raw_scores": True}),
                            ("/rerank", {"query": QUERIES[1], "texts": DOCS[1], "return_text": True}),
                            ("/v1/rerank", {"query": QUERIES[2], "documents": DOCS[2], "top_n": 2}),
                            ("/v2/rerank", {"model": "m", "query": QUERIES[3], "documents": DOCS[3]})):
            on_ray = httpx.post(ray_server["url"] + route, json=body, timeout=60)
            local = httpx.post(embedded.url + route, json=body, timeout=60)
            assert on_ray.status_code == local.status_code == 200, on_ray.text
            assert _without_ids(on_ray.json()) == _without_ids(local.json())
    client = cohere.ClientV2(api_key="none", base_url=ray_server["url"])
    response = client.rerank(model="m", query=QUERIES[0], documents=DOCS[3])
    want = FlagAutoReranker.from_finetuned(str(ray_server["export"])).compute_score(
        [(QUERIES[0], d) for d in DOCS[3]], normalize=True)
    assert {r.index: r.relevance_score for r in response.results} == pytest.approx(dict(enumerate(want)), abs=1e-6)
    info = httpx.get(ray_server["url"] + "/info").json()
    assert info["model_class"] == "encoder-only-base"


def test_a_killed_replica_is_replaced_and_no_request_is_lost_or_wrong(ray_server):
    url = ray_server["url"]
    reranker = FlagAutoReranker.from_finetuned(str(ray_server["export"]))
    expected = [reranker.compute_score([(q, d) for d in docs]) for q, docs in zip(QUERIES, DOCS)]
    root = ray_server["proc"].pid
    before = wait_for(lambda: (lambda r: r if len(r) == 2 else None)(_model_replicas(root)), 30, "2 replicas")
    outcomes: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + LOAD_SECONDS

    def client(c: int) -> None:
        with httpx.Client(timeout=60) as http:
            for n in range(REQUESTS_PER_CLIENT):
                if time.monotonic() > deadline:
                    break
                i = (c + n) % len(QUERIES)
                try:
                    r = http.post(url + "/rerank", json={"query": QUERIES[i], "texts": DOCS[i], "raw_scores": True})
                except httpx.HTTPError as exc:
                    outcome, problem = "lost", f"{type(exc).__name__}: {exc}"
                else:
                    outcome, problem = _judge(r, expected[i])
                with lock:
                    outcomes[outcome] += 1
                    if problem:
                        problems.append(problem)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(outcomes.values()) >= 10, 60, "the load to get going")
    victim = before[0]
    with lock:
        os.kill(victim, signal.SIGKILL)  # a crash, as an OOM kill or a segfault would be
        answered_before_kill = sum(outcomes.values())
    for t in threads:
        t.join(LOAD_SECONDS + 60)
    print(f"outcomes with one replica killed under load: {dict(outcomes)}")
    assert not problems, problems[:5]
    assert outcomes["ok"] > 0 and outcomes["ok"] + outcomes["retriable"] == sum(outcomes.values())
    assert sum(outcomes.values()) == CLIENTS * REQUESTS_PER_CLIENT  # bounded in count: every request answered
    assert answered_before_kill <= CLIENTS * REQUESTS_PER_CLIENT // 2  # the kill came under load: most came after
    after = wait_for(lambda: (lambda r: r if len(r) == 2 and victim not in r else None)(_model_replicas(root)), 120,
                     "Ray Serve to replace the killed replica")
    assert victim not in after
    for i in range(len(QUERIES)):  # the replacement serves correct answers
        outcome, problem = _judge(httpx.post(url + "/rerank", json={"query": QUERIES[i], "texts": DOCS[i],
                                                                    "raw_scores": True}, timeout=60), expected[i])
        assert outcome == "ok", problem


def _judge(r: httpx.Response, want: list[float]) -> tuple[str, str | None]:
    if r.status_code == 503 and r.headers.get("retry-after") == "1" and r.json()["error_type"] == "unhealthy":
        return "retriable", None
    if r.status_code != 200:
        return "wrong", f"{r.status_code}: {r.text[:300]}"
    got = {x["index"]: x["score"] for x in r.json()}
    if sorted(got) != list(range(len(want))) or any(abs(got[i] - w) > 1e-6 for i, w in enumerate(want)):
        return "wrong", f"scores {got} != {want}"
    return "ok", None


def test_sigterm_takes_the_application_down_and_exits_0(ray_server):
    proc = ray_server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(90) == 0, ray_server["log"].read_text()[-3000:]


def test_the_documented_serve_config_file_is_valid():
    """serve/ray-config.yaml passes Ray Serve's own schema, names our deployments, and its args are ServeSettings."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from rerank_serve.ray_app import INGRESS, app_builder

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "serve" / "ray-config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    app = schema.applications[0]
    assert app.import_path == "rerank_serve.ray_app:app_builder"
    assert {d.name for d in app.deployments} == {INGRESS, MODEL}
    ServeSettings.from_dict(app.args)  # every arg is a rerank-serve setting
    assert type(app_builder(app.args)).__name__ == "Application"
