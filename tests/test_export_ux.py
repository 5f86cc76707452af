"""What a user sees of rerank-export: phase progress that stays readable in a log, no torchvision noise, --tensorrt
refused before anything is exported, the built-in models' names and cache (listed, and cleaned of what is ours only).
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import re
from pathlib import Path

import pytest

from rerank_export import cache, cli, exporter
from rerank_export.exporter import ExportOptions, export_onnx, plan_export
from rerank_export.progress import Progress
from rerank_export.testing.factory import BUILTIN, builtin_name

REGISTRATION = "torch.onnx._internal.exporter._registration"  # the logger of the torchvision lines


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def registration_log():
    handler = Records()
    logger = logging.getLogger(REGISTRATION)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_the_torchvision_lines_are_dropped_and_nothing_else(registration_log: Records) -> None:
    logger = logging.getLogger(REGISTRATION)
    with exporter._quiet_torchvision():
        logger.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
        logger.warning("an op could not be registered")
    logger.warning("torchvision is not installed. Skipping %s", "torchvision::roi_align")  # outside: kept
    assert registration_log.messages == ["an op could not be registered",
                                         "torchvision is not installed. Skipping torchvision::roi_align"]
    assert logging.getLogger().filters == [] and logger.filters == []  # nothing left behind


def test_an_int8_export_reports_its_phases_and_counted_steps_in_a_log(checkpoint, tmp_path: Path,
                                                                      registration_log: Records) -> None:
    log = io.StringIO()  # not a terminal: nothing ticks, one line per event
    root = Records()  # ONNX Runtime's quantiser logs its advice on the root logger
    logging.getLogger().addHandler(root)
    try:
        export_onnx(ExportOptions(model=str(checkpoint("gemma")), output=str(tmp_path / "out"), precision="int8"),
                    Progress(exporter.PHASES, log))
    finally:
        logging.getLogger().removeHandler(root)
    assert not [m for m in root.messages if m.startswith("Please consider to run pre-processing")]
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert [line for line in lines if re.fullmatch(r"\[\d/4\] \w+ \.\.\.", line)] == [
        "[1/4] load ...", "[2/4] trace ...", "[3/4] optimise ...", "[4/4] verify ..."]
    assert any(re.fullmatch(r"quantising \d+ weight matmuls to int8 \(\d+ stay fp32: .*\)", line) for line in lines)
    for side in ("reference", "ONNX Runtime"):
        assert any(re.fullmatch(rf"\[4/4\] verify: {side} 24/24 probe pairs in [0-9.]+ s", line) for line in lines)
    assert not [m for m in registration_log.messages if m.startswith("torchvision is not installed")]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_running_phase_is_one_line_redrawn() -> None:
    screen = Terminal()
    report = Progress(["verify"], screen)
    with report.phase("verify"):
        count = report.counter("reference")(total=4)
        count.update(3)
        report.say("a message above the phase line")
        count.update(1)
        count.close()
    text = screen.getvalue()
    assert re.search(r"\r\[1/1\] verify \.\.\. \d+ s, reference 3/4 probe pairs\x1b\[K", text)
    assert "\r\x1b[Ka message above the phase line\n" in text
    assert text.endswith("[1/1] verify done in " + text.rsplit("done in ", 1)[1]) and text.endswith(" s\n")
    assert "\n" not in text.replace("a message above the phase line\n", "").rstrip("\n")  # no other line


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed")
def test_tensorrt_is_checked_before_the_export_starts(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(exporter, "export_onnx", lambda *a, **k: pytest.fail("the export must not start"))
    out = tmp_path / "out"
    assert cli.main(["--model", "tiny-gemma", "--tensorrt", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "tensorrt is required for native TensorRT engines but is not installed" in err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_a_built_in_model_says_it_is_generated_and_where_it_is_cached(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path / "cache"))
    log = io.StringIO()
    plan = plan_export(ExportOptions(model="tiny-xlm-roberta"), Progress([], log))
    assert log.getvalue() == (f"generating the built-in model tiny-xlm-roberta (first use); it is cached under "
                              f"{tmp_path / 'cache' / 'checkpoints'} (RERANK_CACHE)\n")
    assert plan.output == Path("exports/tiny-xlm-roberta-fp32")  # the name `rerank-export list` gives
    log.truncate(0)
    plan_export(ExportOptions(model="tiny-xlm-roberta"), Progress([], log))
    assert log.getvalue() == ""  # cached


def test_list_shows_one_naming_scheme_and_the_cache(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("RERANK_CACHE", str(tmp_path))
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "  tiny-gemma2-lightweight\n" in out and "tiny-gemma2_lightweight" not in out
    assert f"cached under {tmp_path / 'checkpoints'} (RERANK_CACHE)" in out
    assert set(BUILTIN) == {builtin_name(f, s, t) for f, s, t in BUILTIN.values()}
    assert all(re.fullmatch(r"(tiny|mid)-[a-z0-9]+(-[a-z0-9]+)*", name) for name in BUILTIN)


def _write(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True)
    for name in names:
        (directory / name).write_text("x")
    return directory


def test_cache_clean_removes_what_is_provably_ours_only(tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "cache"
    ours = [_write(root / "checkpoints/v1/tiny-gemma", "config.json", "model.safetensors", "tokenizer.json"),
            _write(root / "checkpoints/v1-trained/tiny-gemma-trained-0123456789", "config.json", "training.json"),
            _write(root / "checkpoints/v1/.tiny-xlm-roberta-89abcdef", "config.json"),  # a killed write
            _write(root / "tokenizers" / ("ab" * 16), "tokenizer.json", ".tokenizer.json.1234")]
    elsewhere = _write(tmp_path / "mine", "keep.txt")
    theirs = [_write(root / "checkpoints/v1/my-model", "config.json"),  # not a built-in name
              _write(root / "checkpoints/v1/tiny-minicpm-layerwise", "config.json", "notes.txt"),  # a foreign file
              _write(root / "checkpoints/v1-trained/tiny-gemma", "config.json"),  # a random one among trained
              _write(root / "checkpoints/old", "config.json"),  # not a v<format> folder
              _write(root / "tokenizers/not-a-hash", "tokenizer.json"),
              _write(root / "elsewhere", "x.json")]
    (root / "checkpoints/v1/tiny-gemma2-lightweight").symlink_to(elsewhere)  # a link, whatever its name
    theirs.append(root / "checkpoints/v1/tiny-gemma2-lightweight")
    monkeypatch.setenv("RERANK_CACHE", str(root))
    assert cli.main(["cache"]) == 0
    assert f"built-in model cache: {root} (RERANK_CACHE)\n  4 built-in" in capsys.readouterr().out
    assert cli.main(["cache", "--clean"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"removed 4 cached built-in checkpoints and tokenizers from {root}\n")
    assert not any(p.exists() for p in ours)
    assert all(p.exists() or p.is_symlink() for p in theirs) and (elsewhere / "keep.txt").exists()
    assert sorted(re.findall(r"kept (\S+)", out)) == sorted(map(str, theirs))
    for path in theirs:
        if path.is_symlink():
            path.unlink()
        else:
            for f in path.iterdir():
                f.unlink()
            path.rmdir()
    cache.clean(root)  # now empty folders only: they go, the root the user chose stays
    assert root.is_dir() and list(root.iterdir()) == []
