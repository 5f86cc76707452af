"""The oracle client's caching and error paths (with a fake interpreter), the oracle's capture logic (with a fake
model), and one real round trip through FlagEmbedding that needs no checkpoint."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # conftest.py normally does this; keep the file runnable on its own
    sys.path.insert(0, str(TESTS_DIR))

import oracle_client  # noqa: E402
from oracle_client import OracleUnavailableError, run_oracle  # noqa: E402

FAKE_ORACLE = """#!{python}
import json, os, sys
jobs = json.load(sys.stdin)
with open(os.environ["FAKE_ORACLE_LOG"], "a") as log:
    log.write(json.dumps({{"n_jobs": len(jobs), "argv1": sys.argv[1], "pythonpath": os.environ.get("PYTHONPATH"),
                          "offline": os.environ.get("HF_HUB_OFFLINE")}}) + "\\n")
mode = os.environ.get("FAKE_ORACLE_MODE", "ok")
if mode == "fail":
    print("Traceback ...\\nboom: the oracle env is broken", file=sys.stderr)
    sys.exit(3)
if mode == "garbage":
    print("Some library printed this to stdout")
    sys.exit(0)
answers = [{{"scores": [float(len(job["pairs"]))], "ids": [], "query_lengths": [], "prompt_lengths": [],
             "error": None, "echo": job["call"]}} for job in jobs]
if mode == "short":
    answers = answers[:-1]
print(json.dumps(answers))
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A fake oracle interpreter that logs each invocation; cache and checkpoint in tmp_path."""
    script = tmp_path / "fake-python"
    script.write_text(FAKE_ORACLE.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "invocations.jsonl"
    monkeypatch.setenv("RERANK_ORACLE_PYTHON", str(script))
    monkeypatch.setenv("FAKE_ORACLE_LOG", str(log))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"a": 1}')
    return {"log": log, "ckpt": ckpt, "cache": tmp_path / "cache"}


def job(ckpt: Path, n_pairs: int = 2, tag: int = 0) -> dict[str, Any]:
    pairs = [[f"q{i}", f"p{i}"] for i in range(n_pairs)]
    return {"checkpoint": str(ckpt), "model_class": "encoder-only-base", "init": {}, "call": {"tag": tag},
            "pairs": pairs, "capture_ids": False}


def invocations(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_one_process_for_all_jobs_then_cache_hits(fake: dict[str, Any]) -> None:
    jobs = [job(fake["ckpt"], n, tag=n) for n in (1, 2, 3)]
    first = run_oracle(jobs, cache_dir=fake["cache"])
    assert [r["scores"] for r in first] == [[1.0], [2.0], [3.0]]
    assert [r["echo"] for r in first] == [{"tag": 1}, {"tag": 2}, {"tag": 3}]
    calls = invocations(fake["log"])
    assert len(calls) == 1 and calls[0]["n_jobs"] == 3
    assert calls[0]["argv1"] == str(oracle_client.ORACLE_SCRIPT)
    assert len(list(fake["cache"].glob("*.json"))) == 3

    again = run_oracle(jobs, cache_dir=fake["cache"])
    assert again == first
    assert len(invocations(fake["log"])) == 1  # all three came from the cache


def test_only_misses_go_to_the_oracle_and_order_is_kept(fake: dict[str, Any]) -> None:
    old = job(fake["ckpt"], 2, tag=1)
    run_oracle([old], cache_dir=fake["cache"])
    new = job(fake["ckpt"], 5, tag=2)
    out = run_oracle([new, old], cache_dir=fake["cache"])
    assert [r["scores"] for r in out] == [[5.0], [2.0]]
    assert [c["n_jobs"] for c in invocations(fake["log"])] == [1, 1]


def test_changed_checkpoint_contents_invalidate_the_cache(fake: dict[str, Any]) -> None:
    j = job(fake["ckpt"])
    run_oracle([j], cache_dir=fake["cache"])
    (fake["ckpt"] / "config.json").write_text('{"a": 2}')  # same name, new contents
    run_oracle([j], cache_dir=fake["cache"])
    (fake["ckpt"] / "sub").mkdir()
    (fake["ckpt"] / "sub" / "extra.bin").write_bytes(b"\x00")  # a new file anywhere below the checkpoint
    run_oracle([j], cache_dir=fake["cache"])
    run_oracle([j], cache_dir=fake["cache"])
    assert len(invocations(fake["log"])) == 3


def test_oracle_env_drops_pythonpath_and_forces_offline(fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere/main-env/site-packages")
    run_oracle([job(fake["ckpt"])], cache_dir=fake["cache"])
    (call,) = invocations(fake["log"])
    assert call["pythonpath"] is None and call["offline"] == "1"


def test_failing_oracle_raises_with_stderr_tail_and_caches_nothing(
    fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_ORACLE_MODE", "fail")
    with pytest.raises(RuntimeError, match=r"(?s)exited with status 3.*boom: the oracle env is broken"):
        run_oracle([job(fake["ckpt"])], cache_dir=fake["cache"])
    assert not list(fake["cache"].glob("*.json"))


@pytest.mark.parametrize(("mode", "message"), [("garbage", "stdout is not JSON"), ("short", "answered 1 responses to 2")])
def test_malformed_answers_raise(fake: dict[str, Any], monkeypatch: pytest.MonkeyPatch, mode: str, message: str) -> None:
    monkeypatch.setenv("FAKE_ORACLE_MODE", mode)
    with pytest.raises(RuntimeError, match=message):
        run_oracle([job(fake["ckpt"], tag=1), job(fake["ckpt"], tag=2)], cache_dir=fake["cache"])


def test_no_oracle_interpreter_fails_and_says_run_make_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RERANK_ORACLE_PYTHON", raising=False)
    monkeypatch.setattr(oracle_client, "DEFAULT_ORACLE_PYTHON", tmp_path / "no-venv" / "bin" / "python")
    assert oracle_client.oracle_python() is None
    with pytest.raises(OracleUnavailableError, match="make test"):
        run_oracle([job(tmp_path)], cache_dir=tmp_path / "cache")


def test_oracle_python_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = tmp_path / "venv" / "bin" / "python"
    default.parent.mkdir(parents=True)
    default.write_text("")
    monkeypatch.setattr(oracle_client, "DEFAULT_ORACLE_PYTHON", default)
    monkeypatch.setenv("RERANK_ORACLE_PYTHON", "/opt/oracle/bin/python")
    assert oracle_client.oracle_python() == "/opt/oracle/bin/python"
    monkeypatch.setenv("RERANK_ORACLE_PYTHON", "")
    assert oracle_client.oracle_python() == str(default)
    with pytest.raises(OracleUnavailableError, match="not an executable"):  # exists but is not executable
        run_oracle([job(tmp_path)], cache_dir=tmp_path / "cache")


# --- the oracle script's capture logic, run in this env against a fake reranker (no FlagEmbedding needed) ---


def load_oracle_module() -> Any:
    spec = importlib.util.spec_from_file_location("flagembedding_oracle", oracle_client.ORACLE_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeModel:
    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, **kwargs: Any) -> str:
        return self.forward(**kwargs)

    def forward(self, **kwargs: Any) -> str:
        self.seen += 1
        return "out"


class FakeReranker:
    """Mimics FlagEmbedding: a probe forward, then the real batch, padded to 8 on the left."""

    def __init__(self) -> None:
        self.model = FakeModel()

    def compute_score(self, pairs: list[list[str]], **call: Any) -> list[float]:
        ids = [7] + [len(word) for word in pairs[0]]
        pad = 8 - len(ids)
        row, mask = np.array([[0] * pad + ids]), np.array([[0] * pad + [1] * len(ids)])
        probe = np.array([[99] * 8])
        self.model(input_ids=probe, attention_mask=np.ones_like(probe), query_lengths=[5], prompt_lengths=[6])
        self.model(input_ids=row, attention_mask=mask, query_lengths=[2], prompt_lengths=[call["pl"]])
        return [0.0]


def test_capture_skips_the_probe_strips_padding_and_restores_forward() -> None:
    oracle = load_oracle_module()
    reranker = FakeReranker()
    got = oracle.capture_one(reranker, ["abc", "hello"], {"pl": 4})
    assert got == {"ids": [7, 3, 5], "query_length": 2, "prompt_length": 4}
    assert "forward" not in vars(reranker.model)  # the wrapper is gone
    reranker.model(input_ids=np.zeros((1, 1)), attention_mask=np.ones((1, 1)))
    assert reranker.model.seen == 3


def test_oracle_helpers_serialise_and_split_pairs() -> None:
    oracle = load_oracle_module()
    assert oracle.to_jsonable(np.array([1.5, 2.0], dtype=np.float64)) == [1.5, 2.0]
    assert oracle.to_jsonable([[np.float32(0.5)], [1.0]]) == [[0.5], [1.0]]
    with pytest.raises(TypeError, match="cannot serialise"):
        oracle.to_jsonable({"a": 1})
    assert oracle.as_pair_list(["q", "p"]) == [["q", "p"]]
    assert oracle.as_pair_list([("q", "p"), ["r", "s"]]) == [["q", "p"], ["r", "s"]]


# --- the real oracle (FlagEmbedding in its own env): fails, never skips, when it is missing ---


def test_real_oracle_round_trip_reports_errors_per_job(tmp_path: Path) -> None:
    python = oracle_client.require_oracle_python()  # OracleUnavailableError -> run `make test`
    empty_dir = tmp_path / "not-a-model"
    empty_dir.mkdir()
    jobs = [
        {"checkpoint": str(tmp_path / "missing"), "model_class": "encoder-only-base", "init": {}, "call": {},
         "pairs": [["q", "p"]], "capture_ids": True},
        {"checkpoint": str(empty_dir), "model_class": "decoder-only-moe", "init": {}, "call": {}, "pairs": [["q", "p"]]},
        {"checkpoint": str(empty_dir), "model_class": "encoder-only-base", "init": {"devices": "cuda:0"}, "call": {},
         "pairs": [["q", "p"]]},
        {"checkpoint": str(empty_dir), "model_class": "encoder-only-base", "pairs": [["q", "p"]]},
    ]
    out = run_oracle(jobs, cache_dir=tmp_path / "cache", python=python)
    errors = [r["error"] for r in out]
    assert [e["type"] for e in errors] == ["FileNotFoundError", "ValueError", "ValueError", "ValueError"]
    assert "does not exist" in errors[0]["message"]
    assert "decoder-only-moe" in errors[1]["message"] and "encoder-only-base" in errors[1]["message"]
    assert "devices" in errors[2]["message"]
    assert "Unrecognized model" in errors[3]["message"]  # transformers' own error, reported, not raised
    assert all(r["scores"] is None and r["ids"] == [] for r in out)


def test_real_oracle_rejects_a_request_that_is_not_json() -> None:
    python = oracle_client.require_oracle_python()
    proc = subprocess.run([python, str(oracle_client.ORACLE_SCRIPT)], input="nope", capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "not JSON" in proc.stderr
