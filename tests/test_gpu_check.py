"""benchmarks/gpu_check.py and gpu_session.py on a CPU machine: every GPU backend named as skipped with its reason and
valid JSON written; the whole per-backend path (parity, timing, report) run with the CPU reference standing in for a
GPU backend; the comparison and the CUDA-graph proof on arrays and stand-in backends."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_backends  # noqa: E402
import gpu_check  # noqa: E402
import gpu_session  # noqa: E402
from gpu_backends import BACKENDS, Built  # noqa: E402
from gpu_measure import compare, graph_replay_proof  # noqa: E402
from rerank_runtime.tolerances import Tolerance  # noqa: E402

NOTHING_HERE = all(reason is not None for reason in gpu_backends.unavailable().values())
cpu_only = pytest.mark.skipif(not NOTHING_HERE, reason="a GPU backend can run on this machine")
SMALL = ["--pairs", "10", "--batches", "1", "3", "--lengths", "32", "48", "--iters", "3", "--warmup", "1"]


def run_check(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "out"
    code = gpu_check.main(["--out", str(out), "--cache", str(tmp_path / "cache"), *args])
    return code, json.loads((out / "gpu_check.json").read_text())


@cpu_only
def test_every_gpu_backend_is_named_as_skipped_with_its_reason(tmp_path: Path) -> None:
    code, report = run_check(tmp_path, "--models", "tiny-gemma", "--precisions", "fp32")
    assert code == gpu_check.NO_GPU_BACKEND
    assert [s["backend"] for s in report["skipped"]] == list(BACKENDS)
    assert all(len(s["reason"]) > 20 for s in report["skipped"]), report["skipped"]
    assert report["results"] == [] and report["failures"] == [] and report["gpu_backends_run"] == []
    assert report["versions"]["python"] and report["versions"]["commit"]
    assert "onnxruntime" in report["versions"] and report["versions"]["tensorrt"] is None
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    assert table.count("- skipped ") == len(BACKENDS)


def cpu_stand_in(name: str, checkpoint: str, export: Path | None, precision: str, settings: dict[str, Any],
                 options: Any, cuda: Any, shift: float = 0.0) -> Built:
    """The fp32 PyTorch reference on the CPU in place of a GPU backend (scores shifted by `shift`)."""
    from rerank_export.reference import load_reference
    from rerank_runtime.rerankers import FlagAutoReranker

    loaded = load_reference(checkpoint, model_class=None, devices="cpu")
    front = Shifted(loaded.front, shift)
    return Built(FlagAutoReranker.from_loaded(replace(loaded, front=front), **settings), front, None,
                 {"stand_in": True})


class Shifted:
    """A front whose scores are another front's plus `shift`."""

    def __init__(self, front: Any, shift: float) -> None:
        self.front, self.shift, self.concurrency = front, np.float32(shift), front.concurrency

    def check(self, request: Any) -> None:
        self.front.check(request)

    def run(self, request: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [s + self.shift for s in self.front.run(request, feeds)]


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    reasons = {b: None if b == "torch-cuda" else "not on this machine" for b in BACKENDS}
    monkeypatch.setattr(gpu_check, "unavailable", lambda: reasons)
    monkeypatch.setattr(gpu_check, "build", cpu_stand_in)


def test_the_whole_check_runs_with_a_cpu_stand_in(tmp_path: Path, stand_in: None) -> None:
    code, report = run_check(tmp_path, "--models", "tiny-gemma2-lightweight", "--precisions", "fp32", *SMALL)
    assert code == 0, report["failures"]
    [result] = report["results"]
    assert result["status"] == "passed" and result["stand_in"] and result["parity"]["max_abs_diff"] == 0.0
    assert all(e["top10_same_set"] and e["pairs"] == 32 for e in result["parity"]["exits"])
    shapes = [(t["batch"], t["length"]) for t in result["timing"]]
    assert shapes == [(1, 32), (1, 48), (3, 32), (3, 48)]
    assert all(t["timer"] == "host-clock" and t["p50_ms"] > 0 and t["padded_length"] >= t["length"]  # + prompt
               for t in result["timing"])
    assert "| tiny-gemma2-lightweight | fp32 | torch-cuda | passed | 0.00e+00 | 1.0000 | same |" in \
        (tmp_path / "out" / "gpu_check.md").read_text()


def test_scores_off_the_tolerance_fail_and_are_not_timed(tmp_path: Path, stand_in: None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_check, "build", lambda *a: cpu_stand_in(*a, shift=0.01))
    code, report = run_check(tmp_path, "--models", "tiny-xlm-roberta", "--precisions", "fp32", *SMALL)
    assert code == 1
    [result] = report["results"]
    assert result["status"] == "failed" and "timing" not in result
    assert "exceeds atol 0.001 + rtol 0.001" in report["failures"][0]


def test_compare_checks_tolerance_ranking_top10_and_finiteness() -> None:
    ref = np.linspace(-5, 5, 40)[None, :]
    tol = Tolerance(1e-3, 1e-3, 0.999)
    assert compare(ref + 1e-4, ref, tol)["passed"]
    swapped = ref.copy()
    swapped[0, [29, 30]] = swapped[0, [30, 29]]  # ranks 10 and 11 trade places: the top-10 set changes
    result = compare(swapped, ref, Tolerance(1.0, 0.0, 0.99))
    assert not result["passed"] and result["problems"] == ["exit 0: the top 10 pairs differ from the reference's"]
    broken = ref.copy()
    broken[0, 3] = np.nan
    assert "1 of 40 scores are not finite" in compare(broken, ref, tol)["problems"][0]


class _Engine:
    """A stand-in backend: scores = row sums of input_ids; `stale` replays return the captured batch's scores."""

    concurrency = 1

    def __init__(self, stale: bool = False) -> None:
        self.stale, self.shapes, self.first = stale, [], None

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = feeds["input_ids"].sum(axis=1).astype(np.float32)
        if not self.shapes:
            self.shapes, self.first = [feeds["input_ids"].shape], out
        return [self.first if self.stale else out]

    def captured_shapes(self) -> list[Any]:
        return list(self.shapes)


def test_graph_replay_proof_catches_a_graph_that_ignores_new_inputs() -> None:
    a, b = {"input_ids": np.ones((2, 4), np.int64)}, {"input_ids": np.full((2, 4), 3, np.int64)}
    assert graph_replay_proof(_Engine(), _Engine(), ["score"], a, b)["passed"]
    stale = graph_replay_proof(_Engine(stale=True), _Engine(), ["score"], a, b)
    assert not stale["passed"] and "returned A's scores" in " ".join(stale["problems"])


@cpu_only
def test_the_session_command_writes_its_json_here(tmp_path: Path) -> None:
    out = tmp_path / "session"
    code = gpu_session.main([str(out), "--", "--models", "tiny-gemma", "--precisions", "fp32",
                             "--cache", str(tmp_path / "cache")])
    session = json.loads((out / "session.json").read_text())
    assert code == 0 and session["gpu_check"]["exit"] == gpu_check.NO_GPU_BACKEND
    results = session["test_results"]
    assert results["counts"]["failed"] == 0 and results["counts"]["skipped"] >= 10
    assert all(s["reason"] for s in results["skipped"])
    assert json.loads((out / "gpu_check.json").read_text())["gpu_backends_run"] == []


def test_linked_packages_import_from_this_checkout(tmp_path: Path) -> None:
    links = gpu_session.shadow_packages(tmp_path / "links")
    code = "import rerank_runtime, rerank_export; print(rerank_runtime.__file__, rerank_export.__file__)"
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(links), "PATH": ""},
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(links / "rerank_runtime" / "__init__.py"),
                                   str(links / "rerank_export" / "__init__.py")]


def test_junit_summary_names_skip_reasons(tmp_path: Path) -> None:
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite><testcase classname="t" name="a"/>'
                   '<testcase classname="t" name="b"><skipped message="no GPU"/></testcase>'
                   '<testcase classname="t" name="c"><failure message="boom"/></testcase></testsuite></testsuites>')
    summary = gpu_session.junit_summary(xml)
    assert summary["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert summary["skipped"] == [{"test": "t::b", "reason": "no GPU"}] and summary["failed"][0]["message"] == "boom"
