"""Artifact identity: what manifest.json records about the files beside it, measured at export and checked at load.

A bit-flipped weight, the graph of another export with the same input and output names, or another model's
tokenizer.json would otherwise load and give wrong scores without an error. So the manifest records the size and
sha256 of every artifact file and the tokenizer facts the scores depend on (`TokenLayout`); load checks sizes always,
hashes unless verify_hashes=False (for very large artifacts), and re-measures the tokenizer against the manifest.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tokenizers import Tokenizer

from .errors import ArtifactError, ManifestMismatchError
from .jsonfields import JsonObject
from .kinds import get_kind
from .layout import SEPARATOR, pair_template, plain_tokenizer, text_ids
from .spec import YES_TEXT, ModelSpec

if TYPE_CHECKING:
    from .trt_engine import EngineRecord

_REEXPORT = "copy the whole export directory again, or re-export it with `rerank-export`"
_SKIP = "verify_hashes=False skips hashing for very large artifacts; sizes are always checked"


@dataclass(frozen=True)
class FileRecord:
    """One artifact file as the exporter wrote it."""

    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def records(cls, files: JsonObject) -> dict[str, FileRecord]:
        """manifest.json's "files": {file name: {bytes, sha256}}."""
        out: dict[str, FileRecord] = {}
        for name in files.d:
            record = files.obj(name)
            record.known(("bytes", "sha256"))
            out[name] = cls(record.integer("bytes", 0), record.sha256("sha256"))
        return out


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write a temporary file beside `path`, then rename it over `path`: readers never see half a file, and a failed
    write leaves the old one (and no temporary file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):  # hashlib.file_digest is Python 3.11+; this package supports 3.10
            digest.update(chunk)
    return digest.hexdigest()


def record_file(path: str | os.PathLike[str]) -> FileRecord:
    return FileRecord(os.stat(path).st_size, sha256_file(path))


def check_file(path: Path, record: FileRecord, label: str, verify_hash: bool = True) -> None:
    """ArtifactError naming the file unless it exists with the recorded size (and sha256, when verify_hash)."""
    if not path.is_file():
        raise ArtifactError(f"{label} file {path} is missing; {_REEXPORT}")
    size = path.stat().st_size
    if size != record.bytes:
        raise ArtifactError(f"{label} file {path} has {size} bytes but manifest.json records {record.bytes}: it is "
                            f"truncated, damaged or from another export; {_REEXPORT}")
    if verify_hash:
        found = sha256_file(path)
        if found != record.sha256:
            raise ArtifactError(f"{label} file {path} does not have the sha256 that manifest.json records "
                                f"({record.sha256[:16]}..., found {found[:16]}...): it is damaged or from another "
                                f"export; {_REEXPORT} ({_SKIP})")


def check_engine(export_dir: Path, record: EngineRecord, verify_hash: bool = True) -> None:
    """The native TensorRT engine the manifest records, against its recorded size (and sha256, when verify_hash)."""
    check_file(export_dir / record.engine_file, FileRecord(record.engine_bytes, record.engine_sha256), "engine",
               verify_hash)


@dataclass(frozen=True)
class TokenLayout:
    """Tokenizer facts the scores depend on, recorded at export and re-measured from tokenizer.json at load.

    pad_token / bos_token: the texts of spec.pad_token_id / spec.bos_token_id; separator_ids / prompt_ids: the ids of
    the decoder kinds' "\\n" separator and default prompt (empty for the encoder). Together with the ids ModelSpec
    stores (pair template, "Yes" id) they pin the tokenizer down: another model's tokenizer fails one of them.
    """

    vocab_size: int
    pad_token: str
    bos_token: str | None
    separator_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["separator_ids"], d["prompt_ids"] = list(self.separator_ids), list(self.prompt_ids)
        return d

    @classmethod
    def from_json(cls, layout: JsonObject) -> TokenLayout:
        layout.known(("vocab_size", "pad_token", "bos_token", "separator_ids", "prompt_ids"))
        return cls(vocab_size=layout.integer("vocab_size", 1), pad_token=layout.text("pad_token"),
                   bos_token=layout.optional_text("bos_token"),
                   separator_ids=tuple(layout.integers("separator_ids", 0)),
                   prompt_ids=tuple(layout.integers("prompt_ids", 0)))


def read_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise ArtifactError(f"tokenizer file {path} is missing; {_REEXPORT}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for unreadable JSON
        raise ArtifactError(f"tokenizer file {path} cannot be read ({exc}); {_REEXPORT}") from exc


def describe_tokenizer(tokenizer: Tokenizer, spec: ModelSpec, where: str = "tokenizer.json") -> TokenLayout:
    """The TokenLayout of `tokenizer` for a model of `spec` (what the exporter records)."""
    tok = plain_tokenizer(tokenizer)
    texts = {}
    for field in ("pad_token_id", "bos_token_id"):
        token_id = getattr(spec, field)
        texts[field] = None if token_id is None else tok.id_to_token(token_id)
        if token_id is not None and texts[field] is None:
            raise ArtifactError(f"{where}: spec.{field} {token_id} is not a token of this tokenizer (vocabulary of "
                                f"{tok.get_vocab_size(with_added_tokens=True)}); {_REEXPORT}")
    prompt = get_kind(spec.model_class).default_prompt  # None: a pair-template kind, no separator or prompt
    return TokenLayout(
        vocab_size=tok.get_vocab_size(with_added_tokens=True), pad_token=texts["pad_token_id"] or "",
        bos_token=texts["bos_token_id"], separator_ids=() if prompt is None else tuple(text_ids(tok, SEPARATOR)),
        prompt_ids=() if prompt is None else tuple(text_ids(tok, prompt)),
    )


def tokenizer_mismatches(tokenizer: Tokenizer, spec: ModelSpec, layout: TokenLayout) -> list[str]:
    """What differs between `tokenizer` and the facts recorded for it (empty: it is the export's tokenizer)."""
    tok = plain_tokenizer(tokenizer)
    found: list[str] = []

    def differ(what: str, recorded: Any, measured: Any) -> None:
        if recorded != measured:
            found.append(f"{what}: manifest.json records {recorded!r}, the tokenizer gives {measured!r}")

    differ("vocabulary size", layout.vocab_size, tok.get_vocab_size(with_added_tokens=True))
    differ(f"id of the pad token {layout.pad_token!r} (spec.pad_token_id)", spec.pad_token_id,
           tok.token_to_id(layout.pad_token))
    if layout.bos_token is not None:
        differ(f"id of the BOS token {layout.bos_token!r} (spec.bos_token_id)", spec.bos_token_id,
               tok.token_to_id(layout.bos_token))
    kind = get_kind(spec.model_class)
    if not kind.prompted:
        differ("pair template (spec.pair_prefix/middle/suffix)", (spec.pair_prefix, spec.pair_middle,
                                                                  spec.pair_suffix), pair_template(tok))
        return found
    differ("separator ids", layout.separator_ids, tuple(text_ids(tok, SEPARATOR)))
    differ("default prompt ids", layout.prompt_ids, tuple(text_ids(tok, kind.default_prompt or "")))
    differ(f"first id of {YES_TEXT!r} (spec.yes_token_id)", spec.yes_token_id, (text_ids(tok, YES_TEXT) or [None])[0])
    return found


def check_tokenizer(tokenizer: Tokenizer, spec: ModelSpec, layout: TokenLayout, path: Path) -> None:
    problems = tokenizer_mismatches(tokenizer, spec, layout)
    if problems:
        raise ManifestMismatchError(f"{path} does not match {path.parent / 'manifest.json'}: " + "; ".join(problems)
                                    + f"; the tokenizer comes from another model or export: {_REEXPORT}")
