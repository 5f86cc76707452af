"""The contenders: one object per way of scoring, all behind score(set_name, call) -> (seconds, scores).

In-process: the project's PyTorch reference and the runtime on ONNX Runtime. In their own interpreters, through
bench_worker.py: FlagEmbedding 1.4.2 (.venv-oracle) and sentence-transformers' ONNX CrossEncoder (its own venv).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

HERE = Path(__file__).resolve().parent
WORKER = HERE / "bench_worker.py"
Pairs = Sequence[Sequence[str]]
# Settings of the project's rerankers that compute_score does not take: set on the instance for one call.
INSTANCE_ONLY = ("max_batch_tokens",)


class ContenderError(RuntimeError):
    """A contender that cannot run here; the message says why, and the run records it."""


class Contender(Protocol):
    name: str
    precision: str
    info: dict[str, Any]

    def add_pairs(self, name: str, pairs: Pairs) -> None: ...

    def score(self, name: str, call: dict[str, Any]) -> tuple[float, np.ndarray]: ...

    def close(self) -> None: ...


class InProcess:
    """A reranker object of this process (the runtime or the reference), timed around compute_score_array."""

    def __init__(self, name: str, precision: str, reranker: Any, info: dict[str, Any],
                 extra_call: dict[str, Any] | None = None) -> None:
        self.name, self.precision, self.reranker, self.info = name, precision, reranker, info
        self.extra_call = dict(extra_call or {})
        self.sets: dict[str, list[list[str]]] = {}

    def add_pairs(self, name: str, pairs: Pairs) -> None:
        self.sets[name] = [list(p) for p in pairs]

    def score(self, name: str, call: dict[str, Any]) -> tuple[float, np.ndarray]:
        pairs = self.sets[name]
        call = {**call, **self.extra_call}
        overrides = {k: call.pop(k) for k in INSTANCE_ONLY if k in call}
        saved = {k: getattr(self.reranker, k) for k in overrides}
        for key, value in overrides.items():
            setattr(self.reranker, key, value)
        try:
            start = time.perf_counter()
            scores = self.reranker.compute_score_array(pairs, **call)
            seconds = time.perf_counter() - start
        finally:
            for key, value in saved.items():
                setattr(self.reranker, key, value)
        return seconds, np.atleast_1d(np.asarray(scores, dtype=np.float64))

    def close(self) -> None:
        self.reranker = None


class WorkerContender:
    """A bench_worker.py process in another interpreter; JSON lines over its stdin/stdout."""

    def __init__(self, name: str, precision: str, python: str, load: dict[str, Any], log: Path,
                 call_filter: Sequence[str] | None = None, timeout: float = 1800.0) -> None:
        """call_filter: the call keys this backend takes (None: all); sentence-transformers takes none of ours."""
        self.name, self.precision = name, precision
        self.call_filter = None if call_filter is None else tuple(call_filter)
        self.timeout = timeout
        if not os.access(python, os.X_OK):
            raise ContenderError(f"interpreter {python} is missing or not executable")
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("w")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
        self.proc = subprocess.Popen([python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True, env=env, cwd=str(HERE.parent))
        answer = self._ask({"op": "load", **load})
        self.info = {"python": python, "load_seconds": answer["seconds"], "versions": answer["versions"],
                     "log": str(log)}

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.proc.poll() is not None:
            raise ContenderError(f"{self.name} worker exited with status {self.proc.returncode}; see {self._log.name}")
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise ContenderError(f"{self.name} worker died (status {self.proc.returncode}) during {request['op']}; "
                                 f"its stderr is in {self._log.name}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.get("ok"):
            err = answer.get("error") or {}
            raise ContenderError(f"{self.name}: {err.get('type')}: {err.get('message')} (stderr: {self._log.name})")
        return answer

    def add_pairs(self, name: str, pairs: Pairs) -> None:
        self._ask({"op": "pairs", "name": name, "pairs": [list(p) for p in pairs]})

    def score(self, name: str, call: dict[str, Any]) -> tuple[float, np.ndarray]:
        call = {k: v for k, v in call.items() if k not in INSTANCE_ONLY}
        if self.call_filter is not None:
            call = {k: v for k, v in call.items() if k in self.call_filter}
        answer = self._ask({"op": "score", "name": name, "call": call})
        return float(answer["seconds"]), np.asarray(answer["scores"], dtype=np.float64)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def st_checkpoint(checkpoint: Path, cache: Path) -> Path:
    """A private copy of the checkpoint for sentence-transformers (its ONNX export must not touch the original,
    whose contents key the FlagEmbedding oracle's cache)."""
    target = cache / "st" / checkpoint.name
    stamp = target / ".source"
    weights = checkpoint / "model.safetensors"
    source = json.dumps([str(checkpoint.resolve()), weights.stat().st_size, weights.stat().st_mtime_ns])
    if not (stamp.is_file() and stamp.read_text() == source):
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(checkpoint, target)
        stamp.write_text(source)
    return target
