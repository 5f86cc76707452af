"""manifest.json: what an export directory holds, so the runtime reads facts instead of guessing.

The exporter writes it with `Manifest.write`, which first measures the directory (`sealed`): the size and sha256 of
every artifact file and the tokenizer's `TokenLayout` (see integrity.py). Every loader reads it with `Manifest.read`,
which validates it strictly (unknown keys, wrong types, out-of-range spec fields and inconsistent fields raise
ArtifactError naming the file and the field). `validate_against` then checks that the graph beside it has exactly
the inputs and outputs the manifest records.

Schema 3 (this version) types the "tensorrt" section (`EngineRecord`: the engine file, where it loads, its profiles)
and drops what nothing read (`score`, `graph.opset`, `spec.model_max_length`); schema 2 added `files`, the typed
`token_layout` and `spec.max_positions`. Older manifests are refused with the command that re-exports them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import ArtifactError
from .graph_io import GraphInfo, TensorSpec
from .compression import plan_inputs
from .integrity import (FileRecord, TokenLayout, atomic_write, check_tokenizer, describe_tokenizer, read_tokenizer,
                        record_file)
from .jsonfields import HINT as _HINT
from .jsonfields import JsonObject, is_int
from .kinds import KINDS, get_kind
from .spec import TOKEN_INPUTS, ModelSpec, SpecFieldError, exit_name
from .trt_engine import EngineRecord

__all__ = ["MANIFEST_FILE", "PRECISIONS", "SCHEMA_VERSION", "GraphInfo", "Manifest", "TensorSpec"]

SCHEMA_VERSION = 3
MANIFEST_FILE = "manifest.json"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

_KEYS = ("schema_version", "format", "model_name", "source", "family", "spec", "precision", "graph", "exits",
         "compress_ratio", "compress_layers", "defaults", "token_layout", "max_length", "max_sequence_length",
         "tokenizer", "files", "tensorrt", "versions", "verification")


@dataclass(frozen=True)
class Manifest:
    """manifest.json, typed. Who reads what: model_name, family, precision, exits, compression, versions and
    verification are reported by rerank-serve's /info; source names the checkpoint in the export commands errors
    print; spec, token_layout, defaults, max_length and max_sequence_length drive the host side; graph, files and
    tokenizer are checked at load; tensorrt is the native engine's record (trt_engine.EngineRecord)."""

    model_name: str
    source: str
    family: str
    spec: ModelSpec
    precision: str
    graph: GraphInfo
    max_length: int
    max_sequence_length: int
    exits: tuple[tuple[int, int], ...] = ()
    compress_ratio: int = 1
    compress_layers: tuple[int, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    token_layout: TokenLayout | None = None  # measured by sealed()/write(); required on read
    tokenizer: str = "tokenizer.json"
    files: Mapping[str, FileRecord] = field(default_factory=dict)  # measured by sealed()/write(); required on read
    tensorrt: EngineRecord | None = None
    versions: dict[str, str] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    format: str = "onnx"

    # --- reading and writing -------------------------------------------------------------------------------------

    @classmethod
    def read(cls, export_dir: str | os.PathLike[str]) -> Manifest:
        path = Path(export_dir) / MANIFEST_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ArtifactError(f"{path} does not exist; an export directory needs one ({_HINT})") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path} is not valid JSON ({exc}); {_HINT}") from exc
        return cls.from_dict(data, where=str(path))

    def artifact_files(self) -> dict[str, str]:
        """{file name: what it is} for every file of the artifact that `files` records."""
        return {self.graph.file: "model", **{n: "external data" for n in self.graph.external_data},
                self.tokenizer: "tokenizer"}

    def sealed(self, export_dir: str | os.PathLike[str]) -> Manifest:
        """This manifest with `files` and `token_layout` measured from the files in export_dir as they are now.

        Raises ManifestMismatchError if the tokenizer there does not give the ids `spec` records.
        """
        root = Path(export_dir)
        files = {name: record_file(root / name) for name in self.artifact_files()}
        tokenizer = read_tokenizer(root / self.tokenizer)
        layout = describe_tokenizer(tokenizer, self.spec, str(root / self.tokenizer))
        check_tokenizer(tokenizer, self.spec, layout, root / self.tokenizer)
        return replace(self, files=files, token_layout=layout)

    def write(self, export_dir: str | os.PathLike[str]) -> Path:
        """Seal (measure the artifact files in export_dir), validate, then write manifest.json atomically (sorted
        keys, indent 2; a failed write leaves the old file). Write it after the files it describes; rewriting it
        re-measures them."""
        data = self.sealed(export_dir).to_dict()
        Manifest.from_dict(data, where="the manifest being written")
        path = Path(export_dir) / MANIFEST_FILE
        atomic_write(path, (json.dumps(data, sort_keys=True, indent=2) + "\n").encode("utf-8"))
        return path

    def with_engine(self, record: EngineRecord | None) -> Manifest:
        """This manifest recording a native TensorRT engine (None: none); `.write(export_dir)` it."""
        return replace(self, tensorrt=record)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version, "format": self.format, "model_name": self.model_name,
            "source": self.source, "family": self.family, "spec": self.spec.to_dict(), "precision": self.precision,
            "graph": self.graph.to_dict(), "exits": [[layer, head] for layer, head in self.exits],
            "compress_ratio": self.compress_ratio, "compress_layers": list(self.compress_layers),
            "defaults": dict(self.defaults),
            "token_layout": None if self.token_layout is None else self.token_layout.to_dict(),
            "max_length": self.max_length, "max_sequence_length": self.max_sequence_length,
            "tokenizer": self.tokenizer, "files": {name: r.to_dict() for name, r in sorted(self.files.items())},
            "tensorrt": None if self.tensorrt is None else self.tensorrt.to_dict(), "versions": dict(self.versions),
            "verification": dict(self.verification),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = MANIFEST_FILE) -> Manifest:
        top = JsonObject(data, "", where)
        _check_version(top, where)
        unknown = sorted(set(top.d) - set(_KEYS))
        if unknown:
            raise ArtifactError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(_KEYS)}; {_HINT}")
        top.choice("format", ("onnx",))
        spec = _spec(top)
        tensorrt = None if top.get("tensorrt") is None else EngineRecord.from_json(top.obj("tensorrt"))
        manifest = cls(
            model_name=top.text("model_name"), source=top.text("source"), family=top.text("family"), spec=spec,
            precision=top.choice("precision", PRECISIONS), graph=GraphInfo.from_json(top.obj("graph")),
            max_length=top.integer("max_length", 1), max_sequence_length=top.integer("max_sequence_length", 1),
            exits=_exits(top), compress_ratio=top.integer("compress_ratio", 1),
            compress_layers=tuple(top.integers("compress_layers", 1)), defaults=top.obj("defaults").d,
            token_layout=TokenLayout.from_json(top.obj("token_layout")), tokenizer=top.filename("tokenizer"),
            files=FileRecord.records(top.obj("files")), tensorrt=tensorrt, versions=_versions(top),
            verification=top.obj("verification").d, schema_version=SCHEMA_VERSION, format="onnx",
        )
        manifest._check_consistency(where)
        return manifest

    def _check_consistency(self, where: str) -> None:
        def fail(what: str) -> ArtifactError:
            return ArtifactError(f"{where}: {what}; {_HINT}")

        outputs = [t.name for t in self.graph.outputs]
        kind, model_class = get_kind(self.spec.model_class), self.spec.model_class
        if not kind.takes_cutoff:  # one output, "score"; the other kinds have one output per exit
            if self.exits:
                raise fail(f"field 'exits' must be [] for model_class {model_class!r}, found {list(self.exits)}")
            if "score" not in outputs:
                raise fail(f"field 'graph.outputs' must contain 'score' for model_class {model_class!r}, found "
                           f"{outputs}")
        elif not self.exits:
            raise fail(f"field 'exits' must list [layer, head] pairs for model_class {model_class!r}, found []")
        missing = [n for n in self.exit_names() if n not in outputs]
        if missing:
            raise fail(f"field 'exits' names outputs {missing} that 'graph.outputs' {outputs} lacks")
        if len(set(self.exits)) != len(self.exits):
            raise fail(f"field 'exits' has duplicates: {list(self.exits)}")
        if list(self.compress_layers) != sorted(set(self.compress_layers)):
            raise fail(f"field 'compress_layers' must be ascending without duplicates, found {list(self.compress_layers)}")
        if self.compress_ratio == 1 and self.compress_layers:
            raise fail(f"field 'compress_layers' must be [] when compress_ratio is 1, found {list(self.compress_layers)}")
        if not kind.takes_compression and (self.compress_ratio != 1 or self.compress_layers):
            compressing = [k for k, v in KINDS.items() if v.takes_compression]
            raise fail(f"token compression (compress_ratio/compress_layers) is only for {compressing}, not "
                       f"{model_class!r}")
        if self.max_sequence_length < self.max_length:
            raise fail(f"field 'max_sequence_length' ({self.max_sequence_length}) is below "
                       f"'max_length' ({self.max_length})")
        for side in ("inputs", "outputs"):
            names = [t.name for t in getattr(self.graph, side)]
            if len(set(names)) != len(names):
                raise fail(f"field 'graph.{side}' has duplicate names: {names}")
        if sorted(self.files) != sorted(self.artifact_files()):
            raise fail(f"field 'files' must record exactly {sorted(self.artifact_files())} (the graph, its external "
                       f"data and the tokenizer), found {sorted(self.files)}")
        self._check_inputs(fail)
        self._check_kind_fields(fail)
        if self.tensorrt is not None:
            self._check_profiles(self.tensorrt, fail)

    def stages(self) -> int:
        """How many compression stages the graph bakes (each takes a gather plan: compress_index_k/weight_k)."""
        return len(self.compress_layers) if self.compress_ratio > 1 else 0

    def _check_inputs(self, fail: Any) -> None:
        """The graph takes the token inputs and one plan per baked compression stage, nothing else."""
        want = {**{n: 2 for n in TOKEN_INPUTS}, **{n: 3 for n in plan_inputs(self.stages())}}
        have = {t.name: t for t in self.graph.inputs}
        if set(have) != set(want):
            raise fail(f"field 'graph.inputs' must be {sorted(want)} for compress_ratio={self.compress_ratio}, "
                       f"compress_layers={list(self.compress_layers)}, found {sorted(have)}")
        for name, rank in want.items():
            shape = have[name].shape
            if len(shape) != rank or (rank == 3 and isinstance(shape[2], int) and shape[2] != self.compress_ratio):
                expected = "[batch, sequence]" if rank == 2 else f"[batch, compressed, {self.compress_ratio}]"
                raise fail(f"field 'graph.inputs' gives {name} the shape {list(shape)}; expected {expected}")

    def _check_profiles(self, record: EngineRecord, fail: Any) -> None:
        """Every engine profile gives every graph input shapes of its rank, within the exported sequence length."""
        ranks = {t.name: len(t.shape) for t in self.graph.inputs}
        for p in record.profiles:
            if sorted(p.shapes) != sorted(ranks):
                raise fail(f"field 'tensorrt.profiles[{p.index}].shapes' must give {sorted(ranks)}, found "
                           f"{sorted(p.shapes)}")
            bad = [n for n, levels in p.shapes.items() if len(levels[0]) != ranks[n]]
            if bad:
                raise fail(f"field 'tensorrt.profiles[{p.index}].shapes' has the wrong rank for {bad}")
            if p.max_length > self.max_sequence_length:
                raise fail(f"field 'tensorrt.profiles[{p.index}].max_length' ({p.max_length}) is beyond "
                           f"'max_sequence_length' ({self.max_sequence_length})")

    def _check_kind_fields(self, fail: Any) -> None:
        """Spec fields a kind cannot do without: decoders score a "Yes" id, the layer kinds count layers."""
        kind = get_kind(self.spec.model_class)
        needed = (["yes_token_id"] if kind.prompted else []) + (
            ["num_layers", "start_layer"] if kind.takes_cutoff else [])
        for name in needed:
            value = getattr(self.spec, name)
            if value is None:
                minimum = 1 if name == "num_layers" else 0
                raise fail(f"field 'spec.{name}' must be an integer >= {minimum} for model_class "
                           f"{self.spec.model_class!r}, found None")

    # --- queries ---------------------------------------------------------------------------------------------------

    def exit_names(self) -> tuple[str, ...]:
        """The graph outputs that carry scores: one per exit, or ("score",) for the single-score kinds."""
        return tuple(exit_name(layer, head) for layer, head in self.exits) if self.exits else ("score",)

    def validate_against(self, session_or_io: Any, where: str | None = None) -> None:
        """ManifestMismatchError unless a graph's inputs and outputs match this manifest's (GraphInfo.check: names,
        element types, ranks). session_or_io: an onnxruntime.InferenceSession or an io mapping."""
        self.graph.check(session_or_io, where)


# --- parsing helpers -------------------------------------------------------------------------------------------------


def _check_version(top: JsonObject, where: str) -> None:
    version = top.integer("schema_version")
    if version < SCHEMA_VERSION:
        raise ArtifactError(f"{where}: schema_version {version} was written by an older rerank-export; this runtime "
                            f"reads schema {SCHEMA_VERSION} (schema 2 added the size and sha256 of every artifact "
                            "file, schema 3 the typed TensorRT engine record): re-export it with this version "
                            "(`rerank-export --model <checkpoint> --output <this directory> --overwrite`)")
    if version > SCHEMA_VERSION:
        raise ArtifactError(f"{where}: schema_version {version} is not supported (this runtime reads "
                            f"{SCHEMA_VERSION}); upgrade bge-rerank-fast or re-export with this version")


def _spec(top: JsonObject) -> ModelSpec:
    raw = top.obj("spec")
    try:
        return ModelSpec.from_dict(raw.d)
    except SpecFieldError as exc:
        raise ArtifactError(f"{top.where}: field 'spec.{exc.field}' {exc.problem}; {_HINT}") from exc
    except ValueError as exc:
        raise ArtifactError(f"{top.where}: field 'spec' is invalid: {exc}; {_HINT}") from exc


def _exits(top: JsonObject) -> tuple[tuple[int, int], ...]:
    raw = top.array("exits")
    ok = all(isinstance(e, list) and len(e) == 2 and all(is_int(x) and x >= 0 for x in e) for e in raw)
    if not ok:
        raise top.fail("exits", "a list of [layer, head] integer pairs", raw)
    return tuple((e[0], e[1]) for e in raw)


def _versions(top: JsonObject) -> dict[str, str]:
    v = top.obj("versions").d
    if not all(isinstance(x, str) for x in v.values()):
        raise top.fail("versions", "an object mapping tool names to version strings", v)
    return v
