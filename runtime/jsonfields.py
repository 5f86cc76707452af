"""Typed access to the JSON objects of manifest.json: every error names the file and the dotted field path."""

from __future__ import annotations

import os
from typing import Any

from .errors import ArtifactError

HINT = "fix the file or re-export the artifact with `rerank-export`"
_HEX = frozenset("0123456789abcdef")


class JsonObject:
    """Typed access to one JSON object; errors name the file and the dotted field path."""

    def __init__(self, data: object, path: str, where: str):
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: field '{path.rstrip('.') or '<top level>'}' must be a JSON object, "
                                f"found {type(data).__name__}; {HINT}")
        self.d: dict[str, Any] = dict(data)  # pyright: ignore[reportUnknownArgumentType]
        self.path, self.where = path, where

    def fail(self, key: str, expected: str, found: object) -> ArtifactError:
        return ArtifactError(f"{self.where}: field '{self.path}{key}' must be {expected}, found {found!r}; {HINT}")

    def known(self, keys: tuple[str, ...]) -> None:
        unknown = sorted(set(self.d) - set(keys))
        if unknown:
            raise ArtifactError(f"{self.where}: unknown field(s) {unknown} in '{self.path}'; known fields: "
                                f"{sorted(keys)}; {HINT}")

    def get(self, key: str) -> Any:
        if key not in self.d:
            raise ArtifactError(f"{self.where}: field '{self.path}{key}' is missing; {HINT}")
        return self.d[key]

    def text(self, key: str) -> str:
        v = self.get(key)
        if not isinstance(v, str) or not v:
            raise self.fail(key, "a non-empty string", v)
        return v

    def optional_text(self, key: str) -> str | None:
        v = self.get(key)
        if v is not None and (not isinstance(v, str) or not v):
            raise self.fail(key, "null or a non-empty string", v)
        return v

    def sha256(self, key: str) -> str:
        v = self.text(key)
        if len(v) != 64 or not set(v) <= _HEX:
            raise self.fail(key, "64 lowercase hex digits", v)
        return v

    def filename(self, key: str) -> str:
        v = self.text(key)
        if v != os.path.basename(v) or v in (".", ".."):
            raise self.fail(key, "a file name inside the export directory (no path)", v)
        return v

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        v = self.get(key)
        if v not in options:
            raise self.fail(key, f"one of {list(options)}", v)
        return v

    def integer(self, key: str, minimum: int | None = None) -> int:
        v = self.get(key)
        if not is_int(v) or (minimum is not None and v < minimum):
            raise self.fail(key, "an integer" + (f" >= {minimum}" if minimum is not None else ""), v)
        return v

    def boolean(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise self.fail(key, "true or false", v)
        return v

    def array(self, key: str) -> list[Any]:
        v = self.get(key)
        if not isinstance(v, list):
            raise self.fail(key, "a list", v)
        return v  # pyright: ignore[reportUnknownVariableType]

    def integers(self, key: str, minimum: int) -> list[int]:
        v = self.array(key)
        if not all(is_int(x) and x >= minimum for x in v):
            raise self.fail(key, f"a list of integers >= {minimum}", v)
        return v

    def obj(self, key: str) -> JsonObject:
        v = self.get(key)
        if not isinstance(v, dict):
            raise self.fail(key, "a JSON object", v)
        return JsonObject(v, f"{self.path}{key}.", self.where)


def is_int(v: object) -> bool:
    """An int that is not a bool (JSON true/false load as bools, which are ints in Python)."""
    return isinstance(v, int) and not isinstance(v, bool)
