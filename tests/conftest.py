"""Shared fixtures: tiny checkpoints of every registered family and their exports, built once per session.

Everything is generated locally and deterministically; nothing is downloaded. Generated checkpoints (random and
trained) are cached under .cache/rerank (keyed by the factory's versions and, for trained ones, the recipe); exports
go to a session temp dir. What each family's fixtures look like is its testing recipe (rerank_export.testing.recipes).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))  # oracle_client and other test helpers
os.environ.setdefault("RERANK_CACHE", str(REPO / ".cache" / "rerank"))

from rerank_export.families import REGISTRY  # noqa: E402
from rerank_export.testing.recipes import RECIPES  # noqa: E402

FAMILIES = tuple(REGISTRY)


def pytest_configure(config: pytest.Config) -> None:
    missing = set(FAMILIES) - set(RECIPES)
    if missing:
        raise pytest.UsageError(f"families without a testing recipe (rerank_export.testing.recipes): {sorted(missing)}")


@pytest.fixture(scope="session")
def checkpoint():
    """checkpoint(family, size="tiny", trained=True) -> directory of a built-in checkpoint.

    Trained by default, so that every check on rankings (verification, int8, fp16/bf16) has scores that rank
    something; trained=False gives the random one (parity tests use both).
    """
    from rerank_export.testing.factory import builtin_checkpoint, builtin_name

    def get(family: str, size: str = "tiny", trained: bool = True) -> Path:
        return builtin_checkpoint(builtin_name(family, size, trained))

    return get


@pytest.fixture(scope="session")
def exported(tmp_path_factory, checkpoint):
    """exported(family, precision="fp32", **options) -> export directory of the trained tiny checkpoint (verified at
    export), cached per session; options override the recipe's export settings."""
    from rerank_export.exporter import ExportOptions, export_onnx
    from rerank_export.progress import Progress

    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("exports")

    def get(family: str, precision: str = "fp32", **options) -> Path:
        settings = {**RECIPES[family].export, **options}
        key = (family, precision, tuple(sorted(settings.items())))
        if key not in cache:
            out = root / f"{family}-{precision}-{len(cache)}"
            opts = ExportOptions(model=str(checkpoint(family)), output=str(out), precision=precision, **settings)
            cache[key] = export_onnx(opts, Progress([], quiet=True))
        return cache[key]

    return get
