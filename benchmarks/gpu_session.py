"""The one command to run when a GPU machine is available: the GPU tests and gpu_check, with whatever is installed
there (nothing is installed or downloaded), all results as JSON in one folder, in a few minutes.

    python benchmarks/gpu_session.py OUT [--tests-timeout-s 180] [--check-timeout-s 300] [-- gpu_check options]

1. If `rerank_runtime` cannot be imported (the package is not installed there), a temporary folder with the links
   rerank_runtime -> runtime and rerank_export -> export goes first on PYTHONPATH for both steps.
2. `pytest -m "gpu or trt"` on the GPU test files: OUT/pytest.xml, summarised in OUT/session.json (every test
   passed, failed or skipped, with the reason).
3. `benchmarks/gpu_check.py --out OUT`: OUT/gpu_check.json and OUT/gpu_check.md, with a time budget 90 s short of
   the step's timeout unless one is given, so that it stops starting work and writes its JSON in time.
4. OUT/session.json: the commit (from git, or RERANK_COMMIT where the copy has no .git), each step's command, exit
   status and duration, the test summary.

Exit status: 0 when both steps ran and neither failed (gpu_check's "no GPU backend" counts as not failed but is
reported); 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GPU_TESTS = ("tests/test_gpu_cudart.py", "tests/test_gpu_trt_fake.py", "tests/test_gpu_reference.py",
             "tests/test_gpu_placement.py", "tests/test_tensorrt.py", "tests/test_onnx_backend.py")
NO_GPU_BACKEND = 3  # gpu_check: nothing could run here


def shadow_packages(folder: Path) -> Path:
    """Links that make both import names resolve to this checkout without installing it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in (("rerank_runtime", "runtime"), ("rerank_export", "export")):
        link = folder / name
        if not link.exists():
            link.symlink_to(REPO / source, target_is_directory=True)
    return folder


def environment(scratch: Path) -> tuple[dict[str, str], str]:
    env = dict(os.environ)
    if importlib.util.find_spec("rerank_runtime") is not None:
        return env, "installed"
    links = shadow_packages(scratch / "packages")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(links), env.get("PYTHONPATH")]))
    return env, f"linked from {links}"


def step(command: list[str], env: dict[str, str], timeout: float, log: Path) -> dict[str, Any]:
    started = time.monotonic()
    with log.open("w") as out:
        try:
            done = subprocess.run(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                  check=False)
            status: int | str = done.returncode
        except subprocess.TimeoutExpired:
            status = f"killed after {timeout:.0f} s"
    return {"command": command, "exit": status, "seconds": round(time.monotonic() - started, 1), "log": log.name}


def junit_summary(path: Path) -> dict[str, Any]:
    """passed / failed / skipped test ids from pytest's JUnit XML, skips and failures with their message."""
    if not path.is_file():
        return {"error": f"{path.name} was not written"}
    summary: dict[str, Any] = {"passed": [], "failed": [], "skipped": []}
    for case in ET.parse(path).getroot().iter("testcase"):
        test = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            summary["failed"].append({"test": test, "message": (problem.get("message") or "")[:500]})
        elif skipped is not None:
            summary["skipped"].append({"test": test, "reason": skipped.get("message") or ""})
        else:
            summary["passed"].append(test)
    summary["counts"] = {k: len(v) for k, v in summary.items() if isinstance(v, list)}
    return summary


def commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "HEAD")
    if not head:  # a copy of the working tree without .git: the caller says which commit it is
        return {"commit": os.environ.get("RERANK_COMMIT", "unknown"), "dirty": None}
    return {"commit": head, "dirty": bool(git("status", "--porcelain", "-uno"))}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--tests-timeout-s", type=float, default=180.0)
    p.add_argument("--check-timeout-s", type=float, default=300.0)
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if "--budget-s" not in extra:
        extra += ["--budget-s", str(max(30.0, args.check_timeout_s - 90.0))]
    with tempfile.TemporaryDirectory(prefix="rerank-gpu-session-") as scratch:
        env, packages = environment(Path(scratch))
        tests = step([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu or trt", "-rs",
                      f"--junitxml={out / 'pytest.xml'}", *GPU_TESTS], env, args.tests_timeout_s, out / "pytest.log")
        check = step([sys.executable, str(HERE / "gpu_check.py"), "--out", str(out), *extra], env,
                     args.check_timeout_s, out / "gpu_check.log")
    session = {"schema": 1, **commit(), "python": sys.executable, "packages": packages, "tests": tests,
               "test_results": junit_summary(out / "pytest.xml"), "gpu_check": check}
    (out / "session.json").write_text(json.dumps(session, indent=1) + "\n")
    counts = session["test_results"].get("counts", {})
    print(f"GPU tests: {counts} (exit {tests['exit']}, {tests['seconds']} s); gpu_check: exit {check['exit']} "
          f"({check['seconds']} s); JSON in {out}")
    tests_ok = tests["exit"] in (0, 5)  # 5: every test deselected (none marked gpu/trt ran)
    return 0 if tests_ok and check["exit"] in (0, NO_GPU_BACKEND) else 1


if __name__ == "__main__":
    sys.exit(main())
