"""The exporter never loses anything: what --output names, --overwrite, signals, and what is left beside the output.

The defects: `--output . --overwrite` emptied the current directory; `--output <checkpoint> --overwrite` replaced the
source checkpoint; a directory created at the output path while an export ran was deleted at the end; SIGTERM and
SIGKILL left hidden `.model-XXXX` directories beside the output; exports were created mode 0700.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rerank_export import cli
from rerank_export.output import MARKER, PREFIX

NO_VERIFY = ["--no-verify"]  # verification is not what these tests are about; it only costs time


def tree_digest(root: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under root (symlinks not followed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def fake_export(path: Path, model_name: str = "old") -> Path:
    """A directory that is provably an export: our manifest.json, which parses (an older schema counts too)."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"schema_version": 1, "format": "onnx", "model_name": model_name,
                                                    "spec": {"model_class": "encoder-only-base"}, "graph": {}}))
    (path / "model.onnx").write_bytes(b"old graph")
    return path


@pytest.fixture
def user_files(tmp_path):
    def make(root: Path) -> dict[str, str]:
        root.mkdir(parents=True, exist_ok=True)
        (root / "notes.txt").write_text("mine")
        (root / "sub").mkdir()
        (root / "sub" / "data.csv").write_text("a,b\n")
        return tree_digest(root)

    return make


# --- what --output and --overwrite may replace ------------------------------------------------------------------


def test_output_dot_with_overwrite_refuses_and_keeps_the_current_directory(checkpoint, tmp_path, monkeypatch,
                                                                           user_files, capsys):
    work = tmp_path / "cwd"
    before = user_files(work)
    monkeypatch.chdir(work)
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", ".", "--overwrite", *NO_VERIFY]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rerank-export: error: --output . is the current directory") and len(err.splitlines()) == 1
    assert tree_digest(work) == before
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(tmp_path), "--overwrite", *NO_VERIFY]) == 2
    assert "contains the current directory" in capsys.readouterr().err and tree_digest(work) == before


def test_output_on_the_source_checkpoint_or_its_parent_is_refused(checkpoint, tmp_path, capsys):
    ckpt = Path(shutil.copytree(checkpoint("gemma"), tmp_path / "runs" / "ckpt"))
    before = tree_digest(tmp_path)
    assert cli.main(["--model", str(ckpt), "--output", str(ckpt), "--overwrite", *NO_VERIFY]) == 2
    assert "is the source checkpoint" in capsys.readouterr().err
    fake = tmp_path / "runs" / "manifest.json"  # even a parent that looks like an export ...
    fake.write_text(json.dumps({"schema_version": 2, "format": "onnx", "model_name": "x", "spec": {}, "graph": {}}))
    before = tree_digest(tmp_path)
    assert cli.main(["--model", str(ckpt), "--output", str(tmp_path / "runs"), "--overwrite", *NO_VERIFY]) == 2
    assert "contains the source checkpoint" in capsys.readouterr().err  # ... an export is never replaced over it
    assert tree_digest(tmp_path) == before


def test_overwrite_replaces_only_a_directory_that_is_an_export(checkpoint, tmp_path, user_files, capsys):
    mine = tmp_path / "mine"
    before = user_files(mine)
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(mine), "--overwrite", *NO_VERIFY]) == 2
    err = capsys.readouterr().err
    assert "--overwrite replaces only an export directory" in err and "manifest.json" in err
    assert tree_digest(mine) == before
    (mine / "manifest.json").write_text("{\"format\": \"something else\"}")
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(mine), "--overwrite", *NO_VERIFY]) == 2
    assert (mine / "notes.txt").read_text() == "mine"


def test_overwrite_never_follows_or_replaces_a_symlink(checkpoint, tmp_path, capsys):
    real = fake_export(tmp_path / "real")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    before = tree_digest(real)
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(link), "--overwrite", *NO_VERIFY]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and tree_digest(real) == before


def test_overwrite_replaces_an_export_and_leaves_nothing_beside_it(checkpoint, tmp_path):
    out = fake_export(tmp_path / "out")
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(out), "--overwrite", *NO_VERIFY]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model_name"] == checkpoint("gemma").name and manifest["schema_version"] == 3
    assert (out / "model.onnx").read_bytes() != b"old graph" and not (out / MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_old_export_comes_back_when_the_new_one_cannot_be_put_in_place(checkpoint, tmp_path, monkeypatch):
    """The old export is moved aside and deleted only after the new one is in place."""
    import rerank_export.output as output

    out = fake_export(tmp_path / "out")
    before = tree_digest(out)
    real = output.rename_noreplace
    into_out: list[Path] = []

    def failing(src: Path, dst: Path) -> None:
        if Path(dst) == out:
            into_out.append(Path(src))
            if len(into_out) == 1:  # the new export's move; the second one puts the old export back
                assert not out.exists(), "the old export is moved aside first"
                raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(output, "rename_noreplace", failing)
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(out), "--overwrite", *NO_VERIFY]) == 2
    assert tree_digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert len(into_out) == 2 and into_out[1].name.startswith(PREFIX)


def test_a_directory_that_appears_meanwhile_is_kept_and_the_export_fails(checkpoint, tmp_path, monkeypatch, capsys):
    import rerank_export.exporter as exporter

    out = tmp_path / "out"
    build = exporter._build

    def racing_build(plan, work, report):
        build(plan, work, report)
        out.mkdir()
        (out / "theirs.txt").write_text("someone else's")

    monkeypatch.setattr(exporter, "_build", racing_build)
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(out), *NO_VERIFY]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{out} appeared while exporting" in err and "kept it" in err
    assert (out / "theirs.txt").read_text() == "someone else's" and sorted(p.name for p in out.iterdir()) == [
        "theirs.txt"]
    kept = tmp_path / "out.new"
    assert f"the new export is at {kept}" in err and (kept / "manifest.json").is_file() and not (kept / MARKER).exists()
    assert leftovers(tmp_path) == []


# --- signals and what is left beside the output -----------------------------------------------------------------


def start_export(checkpoint_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rerank_export", "--model", str(checkpoint_dir), "--output",
                             str(out), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_work_dir(parent: Path, proc: subprocess.Popen, limit_s: float = 180.0) -> Path:
    """The export's temporary directory beside the output, once it holds its owner marker (bounded wait)."""
    for _ in range(int(limit_s / 0.02)):
        found = [p for p in parent.glob(f"{PREFIX}*") if (p / MARKER).is_file()]
        if found:
            return found[0]
        if proc.poll() is not None:
            pytest.fail(f"the export ended (exit {proc.returncode}) before its work directory was seen: "
                        + proc.stderr.read())
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no work directory appeared in {parent} within {limit_s} s")


@pytest.mark.parametrize("overwrite", [False, True], ids=["fresh", "overwrite"])
def test_sigterm_is_handled_like_ctrl_c(checkpoint, tmp_path, overwrite):
    out = tmp_path / "out"
    before = tree_digest(fake_export(out)) if overwrite else None
    proc = start_export(checkpoint("gemma"), out, *(["--overwrite"] if overwrite else []))
    wait_for_work_dir(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("rerank-export: interrupted by SIGTERM")
    assert "Traceback" not in err
    assert leftovers(tmp_path) == [], "no hidden temporary directory may be left beside the output"
    if overwrite:
        assert tree_digest(out) == before
    else:
        assert not out.exists()


def test_after_sigkill_the_next_run_removes_only_its_own_stale_temporaries(checkpoint, tmp_path):
    out = tmp_path / "out"
    proc = start_export(checkpoint("gemma"), out)
    stale = wait_for_work_dir(tmp_path, proc)
    proc.kill()  # SIGKILL cannot be caught: the work directory stays behind
    proc.communicate(timeout=60)
    assert stale.is_dir()
    alive = tmp_path / f"{PREFIX}out-alive"  # an export that is still running (this process) keeps its directory
    alive.mkdir()
    (alive / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": None}))
    unmarked = tmp_path / f"{PREFIX}out-unmarked"  # our prefix but no marker: not provably ours
    unmarked.mkdir()
    (unmarked / "keep.txt").write_text("?")
    assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(out), *NO_VERIFY]) == 0
    assert not stale.exists() and (out / "manifest.json").is_file()
    assert leftovers(tmp_path) == sorted([alive.name, unmarked.name])


def test_exports_and_builtin_checkpoints_get_the_usual_umask(checkpoint, tmp_path):
    from rerank_export.testing.factory import builtin_checkpoint

    old = os.umask(0o022)
    try:
        out = tmp_path / "out"
        assert cli.main(["--model", str(checkpoint("gemma")), "--output", str(out), *NO_VERIFY]) == 0
        built = builtin_checkpoint("tiny-gemma", root=tmp_path / "cache")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o755
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "manifest.json": 0o644, "model.onnx": 0o644, "tokenizer.json": 0o644}
    assert {p.name: p.stat().st_mode & 0o777 for p in [built, *built.iterdir()]} == {
        built.name: 0o755, **{p.name: 0o644 for p in built.iterdir()}}
