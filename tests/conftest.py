"""Shared fixtures: tiny checkpoints of every registered family and their exports, built once per session.

Everything is generated locally and deterministically; nothing is downloaded. Generated checkpoints are cached under
.cache/rerank (keyed by the factory's format version); exports go to a session temp dir.
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

FAMILIES = tuple(REGISTRY)
# The lightweight export bakes two exits and two compounding compression stages; the layerwise export keeps every head.
EXPORT_SETTINGS: dict[str, dict] = {
    "xlm_roberta": {},
    "gemma": {},
    "minicpm_layerwise": {},
    "gemma2_lightweight": {"cutoff_layers": (4, 6), "compress_ratio": 2, "compress_layers": (2, 4)},
}


def pytest_configure(config: pytest.Config) -> None:
    missing = set(FAMILIES) - set(EXPORT_SETTINGS)
    if missing:
        raise pytest.UsageError(f"families without export settings in tests/conftest.py: {sorted(missing)}")


@pytest.fixture(scope="session")
def checkpoint():
    """checkpoint(family, size="tiny") -> directory of a generated checkpoint."""
    from rerank_export.testing.factory import builtin_checkpoint

    def get(family: str, size: str = "tiny") -> Path:
        return builtin_checkpoint(f"{size}-{family.replace('_', '-')}")

    return get


@pytest.fixture(scope="session")
def exported(tmp_path_factory, checkpoint):
    """exported(family, precision="fp32", **options) -> export directory (verified at export), cached per session."""
    from rerank_export.exporter import ExportOptions, export_onnx
    from rerank_export.progress import Progress

    cache: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("exports")

    def get(family: str, precision: str = "fp32", **options) -> Path:
        settings = {**EXPORT_SETTINGS[family], **options}
        key = (family, precision, tuple(sorted(settings.items())))
        if key not in cache:
            out = root / f"{family}-{precision}-{len(cache)}"
            opts = ExportOptions(model=str(checkpoint(family)), output=str(out), precision=precision, **settings)
            cache[key] = export_onnx(opts, Progress([], quiet=True))
        return cache[key]

    return get
