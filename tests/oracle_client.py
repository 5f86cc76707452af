"""Main-env side of the FlagEmbedding oracle: run jobs in the oracle interpreter, cache the answers on disk.

Tests import it as a plain module (`from oracle_client import run_oracle, oracle_python`); with pytest's
--import-mode=importlib the tests folder must be on sys.path, e.g. in tests/conftest.py:

    sys.path.insert(0, str(Path(__file__).resolve().parent))

The job and response formats are documented in tests/oracle/flagembedding_oracle.py. A response is cached in
<repo>/.cache/oracle/ under a key made of the job's JSON, the contents of every file in its checkpoint directory
(so a regenerated checkpoint invalidates it) and the oracle script itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
ORACLE_SCRIPT = REPO_ROOT / "tests" / "oracle" / "flagembedding_oracle.py"
DEFAULT_ORACLE_PYTHON = REPO_ROOT / ".venv-oracle" / "bin" / "python"
DEFAULT_CACHE_DIR = REPO_ROOT / ".cache" / "oracle"
ENV_VAR = "RERANK_ORACLE_PYTHON"
STDERR_TAIL = 4000
# Variables that would point the oracle interpreter at the main environment's packages.
_LEAKY_ENV = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")

_dir_hashes: dict[tuple[Any, ...], str] = {}


class OracleUnavailableError(RuntimeError):
    """No oracle interpreter: the parity tests cannot run (they fail, they never skip)."""


def oracle_python() -> str | None:
    """The oracle interpreter: $RERANK_ORACLE_PYTHON, else <repo>/.venv-oracle/bin/python if present, else None."""
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return from_env
    if DEFAULT_ORACLE_PYTHON.exists():
        return str(DEFAULT_ORACLE_PYTHON)
    return None


def require_oracle_python(python: str | None = None) -> str:
    """`python` or oracle_python(), checked; OracleUnavailableError says how to create the oracle environment."""
    python = python if python is not None else oracle_python()
    if python is None:
        raise OracleUnavailableError(
            f"no FlagEmbedding oracle interpreter: {ENV_VAR} is unset and {DEFAULT_ORACLE_PYTHON} does not exist; "
            "run `make test` (it creates .venv-oracle from tests/oracle/requirements.txt) or point "
            f"{ENV_VAR} at a Python with FlagEmbedding==1.4.2 and transformers==4.47.1"
        )
    if not os.access(python, os.X_OK):
        raise OracleUnavailableError(
            f"the oracle interpreter {python!r} is not an executable file; run `make test` to create .venv-oracle, "
            f"or fix {ENV_VAR}"
        )
    return python


def checkpoint_hash(checkpoint: str | os.PathLike[str]) -> str:
    """sha256 over the relative paths and contents of every file under `checkpoint` ('missing' if absent)."""
    root = Path(checkpoint)
    if not root.is_dir():
        return "missing"
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stamp = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    memo_key = (str(root.resolve()), stamp)
    if memo_key not in _dir_hashes:  # the memo only saves re-reading unchanged files within one process
        digest = hashlib.sha256()
        for path in files:
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            digest.update(b"\0")
        _dir_hashes[memo_key] = digest.hexdigest()
    return _dir_hashes[memo_key]


def job_key(job: dict[str, Any]) -> str:
    """The cache key of one job: its canonical JSON, its checkpoint's contents and the oracle script."""
    if "checkpoint" not in job:
        raise ValueError(f"an oracle job needs a 'checkpoint' directory; got keys {sorted(job)}")
    digest = hashlib.sha256()
    digest.update(json.dumps(job, sort_keys=True, ensure_ascii=False).encode())
    digest.update(checkpoint_hash(job["checkpoint"]).encode())
    digest.update(hashlib.sha256(ORACLE_SCRIPT.read_bytes()).hexdigest().encode())
    return digest.hexdigest()


def _oracle_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_ENV}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _invoke(python: str, jobs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """One oracle process for all `jobs`; RuntimeError with the stderr tail if it fails."""
    cmd = [python, str(ORACLE_SCRIPT)]
    try:
        proc = subprocess.run(cmd, input=json.dumps(jobs), capture_output=True, text=True, timeout=timeout,
                              env=_oracle_env(), cwd=str(REPO_ROOT), check=False)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-STDERR_TAIL:]
        raise RuntimeError(f"the oracle ran past {timeout:.0f} s on {len(jobs)} jobs; stderr tail:\n{tail!r}") from exc
    tail = proc.stderr[-STDERR_TAIL:]
    if proc.returncode != 0:
        raise RuntimeError(f"the oracle {cmd} exited with status {proc.returncode}; stderr tail:\n{tail}")
    try:
        responses = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise RuntimeError(
            f"the oracle's stdout is not JSON ({exc}); stdout starts {proc.stdout[:200]!r}; stderr tail:\n{tail}"
        ) from exc
    if not isinstance(responses, list) or len(responses) != len(jobs):
        found = f"{len(responses)} responses" if isinstance(responses, list) else type(responses).__name__
        raise RuntimeError(f"the oracle answered {found} to {len(jobs)} jobs; stderr tail:\n{tail}")
    return responses


def _write_atomically(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh)
    os.replace(tmp, path)


def run_oracle(
    jobs: list[dict[str, Any]],
    *,
    cache_dir: Path | None = None,
    python: str | None = None,
    timeout: float = 1800.0,
) -> list[dict[str, Any]]:
    """FlagEmbedding's responses to `jobs`, in order: from the disk cache, the misses from one oracle process.

    Raises OracleUnavailableError when no oracle interpreter exists (run `make test`) and RuntimeError when the
    oracle process fails. A job that FlagEmbedding itself rejects is not a failure: its response carries "error".
    """
    cache = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    keys = [job_key(job) for job in jobs]
    results: list[dict[str, Any] | None] = []
    for key in keys:
        path = cache / f"{key}.json"
        results.append(json.loads(path.read_text()) if path.is_file() else None)
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        fresh = _invoke(require_oracle_python(python), [jobs[i] for i in missing], timeout)
        for i, response in zip(missing, fresh):
            _write_atomically(cache / f"{keys[i]}.json", response)
            results[i] = response
    done = [r for r in results if r is not None]
    assert len(done) == len(jobs)
    return done
