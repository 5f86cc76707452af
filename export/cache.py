"""The cache of built-in models and converted tokenizers: where it is, what it holds, and removing what is ours.

`RERANK_CACHE` (default `~/.cache/rerank`) holds
  checkpoints/v<format>/<built-in name>/                 random built-in checkpoints (testing.factory)
  checkpoints/v<format>-trained/<built-in name>-<key>/   trained ones
  tokenizers/<32 hex digits>/tokenizer.json              tokenizers converted from slow files (checkpoint.py)
and, while one is being written, a staging directory `.<name>-<8 hex digits>` beside it.

`clean()` removes only what is provably ours: a directory whose name fits that layout exactly and which holds
nothing but the files we write there (no subdirectory, no other file). Anything else under the cache root is left
where it is and listed, and the folders are removed only when that leaves them empty.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .testing.factory import BUILTIN, cache_root

CHECKPOINT_FILES = frozenset({"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                              "special_tokens_map.json", "training.json"})
TOKENIZER_FILES = frozenset({"tokenizer.json"})
_STAGING = r"(?:\.(?P<staged>{name})-[0-9a-f]{{8}})"
_VERSION = re.compile(r"v\d+(?P<trained>-trained)?")
_TOKENIZER = re.compile(r"[0-9a-f]{32}")
_PARTIAL_TOKENIZER = re.compile(r"\.tokenizer\.json\.\d+")


@dataclass
class CleanReport:
    removed: list[Path] = field(default_factory=list)
    left: list[Path] = field(default_factory=list)  # under the cache root, not provably ours


def _builtin_dir(name: str, trained: bool) -> bool:
    """A checkpoint directory name the factory writes in a v<format>[-trained] folder (or its staging name)."""
    names = "|".join(re.escape(n) for n, b in BUILTIN.items() if b.trained == trained)
    key = r"-[0-9a-f]{10}" if trained else ""
    return re.fullmatch(f"(?:{names}){key}|" + _STAGING.format(name=f"(?:{names}){key}"), name) is not None


def _only_files(directory: Path, allowed: frozenset[str], partial: re.Pattern[str] | None = None) -> bool:
    for entry in directory.iterdir():
        if entry.is_symlink() or not entry.is_file():
            return False
        if entry.name not in allowed and not (partial is not None and partial.fullmatch(entry.name)):
            return False
    return True


def _plain_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if _plain_dir(folder) else []


def ours(root: Path) -> tuple[list[Path], list[Path]]:
    """(directories provably ours, entries that are not) under a cache root."""
    mine: list[Path] = []
    other: list[Path] = []
    for top in _entries(root):
        if top.name == "tokenizers" and _plain_dir(top):
            for entry in _entries(top):
                good = (_TOKENIZER.fullmatch(entry.name) is not None and _plain_dir(entry)
                        and _only_files(entry, TOKENIZER_FILES, _PARTIAL_TOKENIZER))
                (mine if good else other).append(entry)
        elif top.name == "checkpoints" and _plain_dir(top):
            for version in _entries(top):
                match = _VERSION.fullmatch(version.name)
                if match is None or not _plain_dir(version):
                    other.append(version)
                    continue
                for entry in _entries(version):
                    good = (_builtin_dir(entry.name, match.group("trained") is not None) and _plain_dir(entry)
                            and _only_files(entry, CHECKPOINT_FILES))
                    (mine if good else other).append(entry)
        else:
            other.append(top)
    return mine, other


def clean(root: Path | None = None) -> CleanReport:
    """Remove the built-in checkpoints and converted tokenizers under the cache root (RERANK_CACHE)."""
    root = root or cache_root()
    mine, other = ours(root)
    report = CleanReport(left=other)
    for directory in mine:
        shutil.rmtree(directory)
        report.removed.append(directory)
    versions = [v for v in _entries(root / "checkpoints") if _VERSION.fullmatch(v.name) and _plain_dir(v)]
    for folder in [*versions, root / "checkpoints", root / "tokenizers"]:  # our folders, once they are empty
        _remove_if_empty(folder)
    if root == _default_root():  # our own folder's name; a folder the user chose for RERANK_CACHE stays
        _remove_if_empty(root)
    return report


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty, or gone
        pass


def _default_root() -> Path:
    return Path.home() / ".cache" / "rerank"


def describe(root: Path | None = None) -> str:
    """A few lines: where the cache is and what it holds."""
    root = root or cache_root()
    source = "RERANK_CACHE" if os.environ.get("RERANK_CACHE") else "the default; set RERANK_CACHE to move it"
    mine, other = ours(root)
    size = sum(f.stat().st_size for d in mine for f in d.iterdir())
    lines = [f"built-in model cache: {root} ({source})",
             f"  {len(mine)} built-in checkpoints and converted tokenizers, {size / 2**20:.1f} MiB"]
    if other:
        lines.append(f"  {len(other)} other entries (not ours, never removed): " + ", ".join(map(str, other[:5]))
                     + (" ..." if len(other) > 5 else ""))
    return "\n".join(lines)
