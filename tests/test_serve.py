"""rerank-serve over real exports, talked to with real clients: the cohere SDK (v1 and v2 clients) and httpx for
text-embeddings-inference's /rerank. Served scores must equal compute_score on the same pairs within 1e-6 (sigmoid on
the routes that normalise). Error cases: 422 naming the field, 413 naming the limit, 401. The process: SIGTERM drains
in-flight requests, then exits 0.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import threading
from typing import Any

import httpx
import pytest
from serve_util import ServerThread, free_port, wait_for

pytest.importorskip("starlette", reason="the serve extra is not installed")
cohere = pytest.importorskip("cohere")

from rerank_runtime import FlagAutoReranker  # noqa: E402
from rerank_runtime.manifest import Manifest  # noqa: E402
from rerank_serve.app import create_app  # noqa: E402
from rerank_serve.model import load  # noqa: E402
from rerank_serve.scheduler import LocalEngine  # noqa: E402
from rerank_serve.settings import ServeSettings  # noqa: E402

QUERY = "what is a panda?"
DOCS = ["The giant panda is a bear species endemic to China.", "hi", "Pandas eat bamboo. " * 5, "", "熊猫 🐼",
        "The giant panda is a bear species endemic to China."]  # a duplicate: ties keep input order
KEY = "test-key-123"


def start(export_dir: Any, **limits: Any) -> ServerThread:
    settings = ServeSettings(export_dir=str(export_dir), **limits)
    app = create_app(settings, lambda metrics: LocalEngine.start(lambda: load(settings), settings, metrics))
    server = ServerThread(app).__enter__()
    server.wait_ready()
    return server


@pytest.fixture(scope="module")
def encoder(exported):
    return exported("xlm_roberta")


@pytest.fixture(scope="module")
def server(encoder):
    server = start(encoder, max_client_batch=8, max_input_chars=300, api_key=KEY)
    yield server
    server.__exit__()


@pytest.fixture(scope="module")
def offline(encoder):
    """compute_score on the same export, as a user would call it."""
    reranker = FlagAutoReranker.from_finetuned(str(encoder))
    return lambda docs, **kw: reranker.compute_score([(QUERY, d) for d in docs], **kw)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def expected_order(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


# --- the three routes with real clients ---------------------------------------------------------------------------


def test_tei_route_raw_and_sigmoid_scores(server, offline):
    raw, normed = offline(DOCS), offline(DOCS, normalize=True)
    for raw_scores, want in ((True, raw), (False, normed)):
        r = httpx.post(server.url + "/rerank", headers=auth(),
                       json={"query": QUERY, "texts": DOCS, "raw_scores": raw_scores, "return_text": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["index"] for x in body] == expected_order(want)
        for x in body:
            assert x["score"] == pytest.approx(want[x["index"]], abs=1e-6)
            assert x["text"] == DOCS[x["index"]]
    assert normed == [1 / (1 + math.exp(-x)) for x in raw]  # the routes' sigmoid is float64, never saturated fp32
    top = httpx.post(server.url + "/rerank", headers=auth(), json={"query": QUERY, "documents": DOCS, "top_n": 2})
    assert [x["index"] for x in top.json()] == expected_order(normed)[:2] and "text" not in top.json()[0]


def test_cohere_v2_client(server, offline):
    client = cohere.ClientV2(api_key=KEY, base_url=server.url)
    response = client.rerank(model="any-name", query=QUERY, documents=DOCS, top_n=4)
    want = offline(DOCS, normalize=True)
    assert [r.index for r in response.results] == expected_order(want)[:4]
    for r in response.results:
        assert r.relevance_score == pytest.approx(want[r.index], abs=1e-6)
    assert response.meta.tokens.input_tokens > len(DOCS)
    assert response.meta.billed_units.search_units == 1


def test_cohere_v1_client_with_documents(server, offline):
    client = cohere.Client(api_key=KEY, base_url=server.url)
    docs = [{"text": d} for d in DOCS[:3]]
    response = client.rerank(query=QUERY, documents=docs, return_documents=True)
    want = offline(DOCS[:3], normalize=True)
    assert [r.index for r in response.results] == expected_order(want)
    for r in response.results:
        assert r.relevance_score == pytest.approx(want[r.index], abs=1e-6)
        assert r.document.text == DOCS[r.index]
    plain = client.rerank(query=QUERY, documents=DOCS[:3], return_documents=False, top_n=1)
    assert len(plain.results) == 1 and plain.results[0].document is None


def test_jina_style_v1_request_has_usage_and_model(server, encoder):
    r = httpx.post(server.url + "/v1/rerank", headers=auth(),
                   json={"model": "jina-reranker", "query": QUERY, "documents": DOCS[:2]})
    body = r.json()
    assert body["model"] == Manifest.read(encoder).model_name  # the export's name (no --model-name given)
    assert body["model"].startswith("tiny-xlm-roberta") and body["usage"]["total_tokens"] > 0
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]
    assert all(x["document"]["text"] == DOCS[x["index"]] for x in body["results"])  # Jina's default: documents back


# --- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("route", "body", "field"), [
    ("/rerank", {"query": QUERY, "texts": "not a list"}, "`texts`"),
    ("/rerank", {"query": 3, "texts": ["a"]}, "`query`"),
    ("/rerank", {"query": QUERY, "texts": ["a", 5]}, "`texts[1]`"),
    ("/rerank", {"query": QUERY, "texts": ["a"], "raw_scores": "yes"}, "`raw_scores`"),
    ("/rerank", {"query": QUERY, "texts": ["a"], "truncation_direction": "left"}, "`truncation_direction`"),
    ("/rerank", {"query": QUERY}, "`texts`"),
    ("/rerank", {"query": QUERY, "texts": []}, "`texts`"),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "top_n": 0}, "`top_n`"),
    ("/v1/rerank", {"query": QUERY, "documents": ["a"], "rank_fields": ["title"]}, "`rank_fields`"),
    ("/v2/rerank", {"query": QUERY, "documents": ["a"], "surprise": 1}, "`surprise`"),
    ("/v2/rerank", {"query": QUERY, "documents": ["a"], "cutoff_layer": 2}, "`cutoff_layer`"),
    ("/v2/rerank", [1, 2], "JSON object"),
])
def test_422_names_the_field(server, route, body, field):
    r = httpx.post(server.url + route, headers=auth(), json=body)
    assert r.status_code == 422, r.text
    assert set(r.json()) == {"error", "error_type"} and field in r.json()["error"]


def test_422_for_malformed_json(server):
    r = httpx.post(server.url + "/rerank", headers={**auth(), "content-type": "application/json"}, content=b'{"query":')
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]


def test_413_names_the_limit(server):
    too_many = httpx.post(server.url + "/rerank", headers=auth(), json={"query": QUERY, "texts": ["d"] * 9})
    assert too_many.status_code == 413 and "--max-client-batch" in too_many.json()["error"]
    assert "limit of 8" in too_many.json()["error"]
    too_long = httpx.post(server.url + "/rerank", headers=auth(), json={"query": QUERY, "texts": ["ok", "x" * 301]})
    assert too_long.status_code == 413 and "`texts[1]`" in too_long.json()["error"]
    assert "--max-input-chars" in too_long.json()["error"]
    huge = httpx.post(server.url + "/rerank", headers=auth(), content=b" " * (10 * 1024 * 1024))
    assert huge.status_code == 413 and "bytes" in huge.json()["error"]


def test_truncate_false_refuses_exactly_the_pairs_the_model_would_cut(encoder):
    server = start(encoder)
    try:
        reranker = FlagAutoReranker.from_finetuned(str(encoder))
        long_doc = " ".join(f"w{i}" for i in range(600))  # several hundred tokens: over max_length 512
        ok = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": ["short"], "truncate": False})
        assert ok.status_code == 200
        refused = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": ["short", long_doc],
                                                           "truncate": False})
        assert refused.status_code == 413 and "texts[1]" in refused.json()["error"]
        assert "max_length of 512" in refused.json()["error"]
        cut = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": [long_doc], "raw_scores": True})
        assert cut.json()[0]["score"] == pytest.approx(reranker.compute_score((QUERY, long_doc)), abs=1e-6)
    finally:
        server.__exit__()


def test_401_for_a_missing_or_wrong_key(server):
    assert httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": ["a"]}).status_code == 401
    wrong = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": ["a"]},
                       headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error_type"] == "unauthorized"
    assert wrong.headers["www-authenticate"] == "Bearer"
    with pytest.raises(cohere.errors.UnauthorizedError):
        cohere.ClientV2(api_key="wrong", base_url=server.url).rerank(model="m", query=QUERY, documents=["a"])
    assert httpx.get(server.url + "/health").status_code == 200  # probes stay open


# --- /info and /metrics --------------------------------------------------------------------------------------------


def test_info_and_metrics(server):
    info = httpx.get(server.url + "/info").json()
    assert info["model_class"] == "encoder-only-base" and info["precision"] == "fp32" and info["provider"] == "cpu"
    assert info["max_length"] == 512 and info["exits"] == [] and info["auth"] is True
    assert "onnxruntime" in info["versions"] and "api_key" not in info["limits"]
    assert info["verification"]["passed"] is True and info["engine"] is None  # what the manifest records
    httpx.post(server.url + "/rerank", headers=auth(), json={"query": QUERY, "texts": DOCS[:2]})
    text = httpx.get(server.url + "/metrics").text
    for series in ("rerank_requests_total", "rerank_request_duration_seconds_bucket", "rerank_queue_wait_seconds",
                   "rerank_batch_pairs", "rerank_batch_tokens", "rerank_pairs_scored_total",
                   "rerank_requests_in_flight", "rerank_queue_pairs", "rerank_pairs_dropped_total"):
        assert series in text, series
    assert 'rerank_requests_total{route="/rerank",status="200"}' in text


# --- layerwise and lightweight exports: cutoff_layer -------------------------------------------------------------


@pytest.mark.parametrize("family", ["minicpm_layerwise", "gemma2_lightweight"])
def test_cutoff_layer_picks_an_exported_exit(exported, family):
    export_dir = exported(family)
    reranker = FlagAutoReranker.from_finetuned(str(export_dir))
    server = start(export_dir)
    try:
        info = httpx.get(server.url + "/info").json()
        pairs = [(QUERY, d) for d in DOCS[:3]]
        default = reranker.compute_score_array(pairs)
        want_default = default[-1] if default.ndim == 2 else default  # several default exits: the deepest is served
        got = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": DOCS[:3], "raw_scores": True}).json()
        assert {x["index"]: x["score"] for x in got} == pytest.approx(dict(enumerate(want_default)), abs=1e-6)
        assert info["default_cutoff_layer"] == max(layer for layer, _ in info["exits"])
        for layer in info["cutoff_layers"]:
            want = reranker.compute_score_array(pairs, cutoff_layers=[layer])
            got = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": DOCS[:3], "raw_scores": True,
                                                           "cutoff_layer": layer}).json()
            assert {x["index"]: x["score"] for x in got} == pytest.approx(dict(enumerate(want)), abs=1e-6)
        refused = httpx.post(server.url + "/rerank", json={"query": QUERY, "texts": ["a"], "cutoff_layer": 99})
        assert refused.status_code == 422 and str(info["cutoff_layers"]) in refused.json()["error"]
    finally:
        server.__exit__()


# --- the process: SIGTERM drains, then exits 0 ----------------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_then_exits_0(encoder):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # a 1.5 s batch window keeps the requests pending when SIGTERM arrives
    proc = subprocess.Popen([sys.executable, "-m", "rerank_serve.cli", str(encoder), "--port", str(port),
                             "--max-batch-wait-ms", "1500", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _get(url + "/ready") == 200, 120, "the subprocess to be ready")
        out: dict[int, Any] = {}
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, httpx.post(
            url + "/rerank", json={"query": QUERY, "texts": DOCS[i : i + 2], "raw_scores": True}, timeout=60)))
            for i in range(4)]
        for t in threads:
            t.start()
        wait_for(lambda: _queued(url) >= 8, 30, "8 pairs to be pending")
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0, proc.stdout.read().decode() if proc.stdout else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    reranker = FlagAutoReranker.from_finetuned(str(encoder))
    for i, response in out.items():
        assert response.status_code == 200
        want = reranker.compute_score([(QUERY, d) for d in DOCS[i : i + 2]])
        assert {x["index"]: x["score"] for x in response.json()} == pytest.approx(dict(enumerate(want)), abs=1e-6)
    assert len(out) == 4
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/health")


def _get(url: str) -> int:
    try:
        return httpx.get(url).status_code
    except httpx.HTTPError:
        return 0


def _queued(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("rerank_queue_pairs "):
            return float(line.split()[1])
    return 0.0


def test_cli_refuses_a_missing_export_with_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rerank_serve.cli", str(tmp_path / "nope")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "no export directory" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "rerank_serve.cli", str(tmp_path), "--max-queue", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "max_queue" in bad.stderr


# --- a framework integration: LangChain's Cohere reranker against /v2/rerank ------------------------------------------


def test_langchain_cohere_rerank(server, offline):
    langchain_cohere = pytest.importorskip("langchain_cohere")
    from langchain_core.documents import Document

    reranker = langchain_cohere.CohereRerank(model="any-name", cohere_api_key=KEY, base_url=server.url, top_n=3)
    docs = [Document(page_content=d, metadata={"n": i}) for i, d in enumerate(DOCS[:5])]
    kept = reranker.compress_documents(docs, QUERY)
    want = offline(DOCS[:5], normalize=True)
    assert [d.metadata["n"] for d in kept] == expected_order(want)[:3]
    for d in kept:
        assert d.metadata["relevance_score"] == pytest.approx(want[d.metadata["n"]], abs=1e-6)


def test_the_server_never_imports_torch(encoder):
    """The server is the runtime's: loading, warming up and scoring through the app's model import no torch."""
    code = (
        "import sys\n"
        "from rerank_serve import app, cli, model, scheduler, schemas\n"
        "from rerank_serve.settings import ServeSettings\n"
        f"m = model.load(ServeSettings(export_dir={str(encoder)!r}))\n"
        "m.warm_up()\n"
        "bad = [name for name in ('torch', 'transformers') if name in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
