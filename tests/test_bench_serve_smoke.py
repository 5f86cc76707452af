"""benchmarks/bench_serve.py at smoke size: its checks, its report, and one tiny end-to-end run (no timing asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))
pytest.importorskip("starlette", reason="the serve extra is not installed")

import bench_serve  # noqa: E402
import bench_serve_load  # noqa: E402
import bench_serve_report  # noqa: E402


def test_every_answer_is_judged_against_the_offline_scores():
    want = [1.0, -2.0, 0.5]
    assert bench_serve_load.judge({0: 1.0, 1: -2.0, 2: 0.5}, want, 1e-5, 1e-5) == "ok"
    assert bench_serve_load.judge({0: 1.0, 1: -2.0 + 1e-3, 2: 0.5}, want, 1e-5, 1e-5) == "mismatched"
    assert bench_serve_load.judge({0: 1.0, 2: 0.5}, want, 1e-5, 1e-5) == "lost"
    assert bench_serve_load.judge({0: 1.0, 1: -2.0, 2: 0.5, 3: 0.0}, want, 1e-5, 1e-5) == "lost"


def test_requests_are_bounded_and_repeatable():
    pool = [[f"q{i}", f"passage {i}"] for i in range(50)]
    plan = bench_serve_load.make_requests(pool, clients=3, docs=4, per_client=2, seed=1)
    assert [len(reqs) for reqs in plan] == [2, 2, 2] and all(len(docs) == 4 for reqs in plan for _, docs in reqs)
    assert plan == bench_serve_load.make_requests(pool, clients=3, docs=4, per_client=2, seed=1)
    assert bench_serve.target_clients([1, 8, 32, 128]) == 32 and bench_serve.target_clients([1, 4]) == 4
    assert bench_serve.target_clients([64, 128]) == 64


def _records(serve_rate: float, nobatch_rate: float, lost: int = 0) -> list[dict]:
    env = {"run": "r", "type": "environment", "cpu": "Test CPU", "physical_cores": 2, "commit": "abc", "dirty": False,
           "versions": {}, "load_average": [0.5, 0.5, 0.5], "time_utc": "2026-01-01T00:00:00",
           "settings": {"model": "mid-xlm-roberta", "requests_per_client": 2, "max_batch_tokens": 16384,
                        "max_batch_wait_ms": 2.0}}
    load = {"run": "r", "type": "load", "clients": 32, "docs": 1, "requests": 64, "latency_s": {"p50": 0.1,
            "p95": 0.2, "p99": 0.3}, "mismatched": 0}
    return [env, {"run": "r", "type": "offline", "clients": 32, "docs": 1, "pairs_per_s": 100.0},
            {**load, "server": "rerank-serve", "pairs_per_s": serve_rate, "lost": lost},
            {**load, "server": "rerank-serve (no cross-request batching)", "pairs_per_s": nobatch_rate, "lost": 0}]


def test_report_judges_the_three_targets(tmp_path):
    md, png = bench_serve_report.write_report(_records(90.0, 20.0), tmp_path / "serve")
    text = md.read_text()
    assert "| rerank-serve | 32 | 1 | 64 | 90.0 | 0.90 | 100 / 200 / 300 | 0 | 0 |" in text
    assert "0.90 (target >= 0.85): met" in text and "4.50x (target >= 3.0x): met" in text
    assert "lost 0, mismatched 0 (target 0 and 0): met" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missed = bench_serve_report.write_report(_records(80.0, 40.0, lost=1), tmp_path / "missed")[0].read_text()
    assert "0.80 (target >= 0.85): **missed**" in missed and "2.00x (target >= 3.0x): **missed**" in missed
    assert "lost 1, mismatched 0 (target 0 and 0): **missed**" in missed


def test_a_tiny_run_end_to_end(tmp_path):
    stem = tmp_path / "serve"
    assert bench_serve.main(["--model", "tiny-xlm-roberta", "--clients", "1,3", "--docs", "1,2",
                             "--requests-per-client", "2", "--pool", "40", "--peers", "none", "--out", str(stem)]) == 0
    records = [json.loads(line) for line in (tmp_path / "serve.jsonl").read_text().splitlines()]
    loads = [r for r in records if r["type"] == "load"]
    assert {(r["server"], r["clients"], r["docs"]) for r in loads} == {
        ("rerank-serve", 1, 1), ("rerank-serve", 3, 1), ("rerank-serve", 1, 2), ("rerank-serve", 3, 2),
        ("rerank-serve (no cross-request batching)", 3, 1)}
    assert all(r["lost"] == r["mismatched"] == 0 and r["ok"] == r["requests"] for r in loads)
    assert [r["exit_code"] for r in records if r["type"] == "server-stopped"] == [0, 0]  # SIGTERM drains, exits 0
    assert len([r for r in records if r["type"] == "offline"]) == 4
    text = (tmp_path / "serve.md").read_text()
    assert "| rerank-serve | 3 | 2 | 6 |" in text and "lost 0, mismatched 0" in text
    assert (tmp_path / "serve.png").is_file()
