"""manifest.json: what an export directory holds, so the runtime reads facts instead of guessing.

The exporter writes it with `Manifest.write`; every loader reads it with `Manifest.read`, which validates it strictly
(unknown keys, wrong types and inconsistent fields raise ArtifactError naming the file and the field).
`validate_against` then checks that the graph beside it has exactly the inputs and outputs the manifest records.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ArtifactError, ManifestMismatchError
from .spec import ENCODER, DECODER, LIGHTWEIGHT, ModelSpec, exit_name

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
SCORE_SEMANTICS = "raw logit; normalize=True applies a sigmoid"
SINGLE_SCORE_CLASSES = (ENCODER, DECODER)  # one output, "score"; the other kinds have one output per exit

# manifest dtype name -> ONNX Runtime's NodeArg.type string
ORT_TYPES = {
    "float32": "tensor(float)", "float16": "tensor(float16)", "bfloat16": "tensor(bfloat16)",
    "float64": "tensor(double)", "int64": "tensor(int64)", "int32": "tensor(int32)",
    "int8": "tensor(int8)", "uint8": "tensor(uint8)", "bool": "tensor(bool)",
}
_DTYPE_OF_ORT = {v: k for k, v in ORT_TYPES.items()}
_KEYS = ("schema_version", "format", "model_name", "source", "family", "spec", "precision", "graph", "exits",
         "compress_ratio", "compress_layers", "defaults", "token_layout", "max_length", "max_sequence_length",
         "tokenizer", "score", "tensorrt", "versions", "verification")
_HINT = "fix the file or re-export the artifact with `rerank-export`"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: dims are ints (fixed) or axis names (dynamic)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphInfo:
    file: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "external_data": list(self.external_data), "opset": self.opset,
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


@dataclass(frozen=True)
class Manifest:
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
    token_layout: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = "tokenizer.json"
    score: str = SCORE_SEMANTICS
    tensorrt: dict[str, Any] | None = None
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

    def write(self, export_dir: str | os.PathLike[str]) -> Path:
        """Validate, then write manifest.json atomically (sorted keys, indent 2)."""
        data = self.to_dict()
        Manifest.from_dict(data, where="the manifest being written")
        path = Path(export_dir) / MANIFEST_FILE
        tmp = path.with_name(MANIFEST_FILE + ".tmp")
        tmp.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version, "format": self.format, "model_name": self.model_name,
            "source": self.source, "family": self.family, "spec": self.spec.to_dict(), "precision": self.precision,
            "graph": self.graph.to_dict(), "exits": [[layer, head] for layer, head in self.exits],
            "compress_ratio": self.compress_ratio, "compress_layers": list(self.compress_layers),
            "defaults": dict(self.defaults), "token_layout": dict(self.token_layout), "max_length": self.max_length,
            "max_sequence_length": self.max_sequence_length, "tokenizer": self.tokenizer, "score": self.score,
            "tensorrt": None if self.tensorrt is None else dict(self.tensorrt), "versions": dict(self.versions),
            "verification": dict(self.verification),
        }

    @classmethod
    def from_dict(cls, data: object, where: str = MANIFEST_FILE) -> Manifest:
        top = _Obj(data, "", where)
        unknown = sorted(set(top.d) - set(_KEYS))
        if unknown:
            raise ArtifactError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(_KEYS)}; {_HINT}")
        version = top.integer("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(f"{where}: schema_version {version} is not supported (this runtime reads "
                                f"{SCHEMA_VERSION}); upgrade bge-rerank-fast or re-export with this version")
        top.choice("format", ("onnx",))
        try:
            spec = ModelSpec.from_dict(top.obj("spec").d)
        except (ValueError, TypeError) as exc:
            raise ArtifactError(f"{where}: field 'spec' is invalid: {exc}; {_HINT}") from exc
        tensorrt = top.get("tensorrt")
        manifest = cls(
            model_name=top.text("model_name"), source=top.text("source"), family=top.text("family"), spec=spec,
            precision=top.choice("precision", PRECISIONS), graph=_graph(top.obj("graph")),
            max_length=top.integer("max_length", 1), max_sequence_length=top.integer("max_sequence_length", 1),
            exits=_exits(top), compress_ratio=top.integer("compress_ratio", 1),
            compress_layers=tuple(top.integers("compress_layers", 1)), defaults=top.obj("defaults").d,
            token_layout=top.obj("token_layout").d, tokenizer=top.filename("tokenizer"), score=top.text("score"),
            tensorrt=None if tensorrt is None else top.obj("tensorrt").d, versions=_versions(top),
            verification=top.obj("verification").d, schema_version=version, format="onnx",
        )
        manifest._check_consistency(where)
        return manifest

    def _check_consistency(self, where: str) -> None:
        def fail(what: str) -> ArtifactError:
            return ArtifactError(f"{where}: {what}; {_HINT}")

        outputs = [t.name for t in self.graph.outputs]
        kind = self.spec.model_class
        if kind in SINGLE_SCORE_CLASSES:
            if self.exits:
                raise fail(f"field 'exits' must be [] for model_class {kind!r}, found {list(self.exits)}")
            if "score" not in outputs:
                raise fail(f"field 'graph.outputs' must contain 'score' for model_class {kind!r}, found {outputs}")
        elif not self.exits:
            raise fail(f"field 'exits' must list [layer, head] pairs for model_class {kind!r}, found []")
        missing = [n for n in self.exit_names() if n not in outputs]
        if missing:
            raise fail(f"field 'exits' names outputs {missing} that 'graph.outputs' {outputs} lacks")
        if len(set(self.exits)) != len(self.exits):
            raise fail(f"field 'exits' has duplicates: {list(self.exits)}")
        if list(self.compress_layers) != sorted(set(self.compress_layers)):
            raise fail(f"field 'compress_layers' must be ascending without duplicates, found {list(self.compress_layers)}")
        if self.compress_ratio == 1 and self.compress_layers:
            raise fail(f"field 'compress_layers' must be [] when compress_ratio is 1, found {list(self.compress_layers)}")
        if kind != LIGHTWEIGHT and (self.compress_ratio != 1 or self.compress_layers):
            raise fail(f"token compression (compress_ratio/compress_layers) is only for {LIGHTWEIGHT!r}, not {kind!r}")
        if self.max_sequence_length < self.max_length:
            raise fail(f"field 'max_sequence_length' ({self.max_sequence_length}) is below "
                       f"'max_length' ({self.max_length})")
        for side in ("inputs", "outputs"):
            names = [t.name for t in getattr(self.graph, side)]
            if len(set(names)) != len(names):
                raise fail(f"field 'graph.{side}' has duplicate names: {names}")

    # --- queries ---------------------------------------------------------------------------------------------------

    def exit_names(self) -> tuple[str, ...]:
        """The graph outputs that carry scores: one per exit, or ("score",) for the single-score kinds."""
        return tuple(exit_name(layer, head) for layer, head in self.exits) if self.exits else ("score",)

    def describe_heads(self) -> str:
        """'layer 2 (head 0), layer 3 (head 1)' or 'one score output' for error messages."""
        if not self.exits:
            return "one score output ('score')"
        return ", ".join(f"layer {layer} (head {head})" for layer, head in self.exits)

    def validate_against(self, session_or_io: Any, where: str | None = None) -> None:
        """Check that a graph's inputs and outputs match this manifest (names, element types and ranks).

        session_or_io: an onnxruntime.InferenceSession (anything with get_inputs()/get_outputs() returning objects
        with .name, .type and .shape), or a mapping {"inputs": {name: dtype}, "outputs": {name: dtype}} whose dtypes
        are manifest names ("int64"), ONNX Runtime type strings ("tensor(int64)") or None (not compared).
        """
        graph_io = _graph_io(session_or_io)
        problems: list[str] = []
        for side in ("inputs", "outputs"):
            want = {t.name: t for t in getattr(self.graph, side)}
            have = graph_io[side]
            if set(want) != set(have):
                problems.append(f"{side}: manifest has {sorted(want)}, graph has {sorted(have)}")
                continue
            for name, spec in want.items():
                dtype, rank = have[name]
                if dtype is not None and dtype != spec.dtype:
                    problems.append(f"{side[:-1]} {name!r}: manifest dtype {spec.dtype}, graph dtype {dtype}")
                if rank is not None and rank != len(spec.shape):
                    problems.append(f"{side[:-1]} {name!r}: manifest shape {list(spec.shape)}, graph rank {rank}")
        if problems:
            raise ManifestMismatchError(
                f"manifest.json and {where or self.graph.file} disagree: " + "; ".join(problems)
                + "; the files come from different exports: re-export the artifact with `rerank-export`"
            )


def tensors_from_session(session: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) as TensorSpecs from an onnxruntime.InferenceSession, for writers of manifests."""
    def specs(args: Any) -> tuple[TensorSpec, ...]:
        out: list[TensorSpec] = []
        for a in args:
            dims = tuple(d if isinstance(d, (int, str)) else f"dim{i}" for i, d in enumerate(a.shape))
            out.append(TensorSpec(a.name, _DTYPE_OF_ORT.get(a.type, a.type), dims))
        return tuple(out)

    return specs(session.get_inputs()), specs(session.get_outputs())


# --- parsing helpers -------------------------------------------------------------------------------------------------


class _Obj:
    """Typed access to one JSON object; errors name the file and the dotted field path."""

    def __init__(self, data: object, path: str, where: str):
        if not isinstance(data, dict):
            raise ArtifactError(f"{where}: field '{path.rstrip('.') or '<top level>'}' must be a JSON object, "
                                f"found {type(data).__name__}; {_HINT}")
        self.d: dict[str, Any] = dict(data)  # pyright: ignore[reportUnknownArgumentType]
        self.path, self.where = path, where

    def fail(self, key: str, expected: str, found: object) -> ArtifactError:
        return ArtifactError(f"{self.where}: field '{self.path}{key}' must be {expected}, found {found!r}; {_HINT}")

    def get(self, key: str) -> Any:
        if key not in self.d:
            raise ArtifactError(f"{self.where}: field '{self.path}{key}' is missing; {_HINT}")
        return self.d[key]

    def text(self, key: str) -> str:
        v = self.get(key)
        if not isinstance(v, str) or not v:
            raise self.fail(key, "a non-empty string", v)
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
        if not _is_int(v) or (minimum is not None and v < minimum):
            raise self.fail(key, "an integer" + (f" >= {minimum}" if minimum is not None else ""), v)
        return v

    def array(self, key: str) -> list[Any]:
        v = self.get(key)
        if not isinstance(v, list):
            raise self.fail(key, "a list", v)
        return v  # pyright: ignore[reportUnknownVariableType]

    def integers(self, key: str, minimum: int) -> list[int]:
        v = self.array(key)
        if not all(_is_int(x) and x >= minimum for x in v):
            raise self.fail(key, f"a list of integers >= {minimum}", v)
        return v

    def obj(self, key: str) -> _Obj:
        v = self.get(key)
        if not isinstance(v, dict):
            raise self.fail(key, "a JSON object", v)
        return _Obj(v, f"{self.path}{key}.", self.where)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _graph(g: _Obj) -> GraphInfo:
    names = g.array("external_data")
    if not all(isinstance(n, str) and n and n == os.path.basename(n) for n in names):
        raise g.fail("external_data", "a list of file names inside the export directory", names)
    return GraphInfo(file=g.filename("file"), opset=g.integer("opset", 1), inputs=_tensors(g, "inputs"),
                     outputs=_tensors(g, "outputs"), external_data=tuple(names))


def _tensors(g: _Obj, key: str) -> tuple[TensorSpec, ...]:
    items = g.array(key)
    if not items:
        raise g.fail(key, "a non-empty list of {name, dtype, shape}", items)
    out: list[TensorSpec] = []
    for i, item in enumerate(items):
        t = _Obj(item, f"{g.path}{key}[{i}].", g.where)
        shape = t.array("shape")
        if not all((_is_int(d) and d >= 1) or (isinstance(d, str) and d) for d in shape):
            raise t.fail("shape", "a list of positive ints or axis names", shape)
        out.append(TensorSpec(t.text("name"), t.choice("dtype", tuple(ORT_TYPES)), tuple(shape)))
    return tuple(out)


def _exits(top: _Obj) -> tuple[tuple[int, int], ...]:
    raw = top.array("exits")
    ok = all(isinstance(e, list) and len(e) == 2 and all(_is_int(x) and x >= 0 for x in e) for e in raw)
    if not ok:
        raise top.fail("exits", "a list of [layer, head] integer pairs", raw)
    return tuple((e[0], e[1]) for e in raw)


def _versions(top: _Obj) -> dict[str, str]:
    v = top.obj("versions").d
    if not all(isinstance(x, str) for x in v.values()):
        raise top.fail("versions", "an object mapping tool names to version strings", v)
    return v


def _graph_io(session_or_io: Any) -> dict[str, dict[str, tuple[str | None, int | None]]]:
    """{"inputs"|"outputs": {name: (manifest dtype or None, rank or None)}}."""
    if isinstance(session_or_io, Mapping):
        io: Mapping[str, Any] = session_or_io  # pyright: ignore[reportUnknownVariableType]
        return {side: {name: (_normalise_dtype(t), None) for name, t in dict(io.get(side, {})).items()}
                for side in ("inputs", "outputs")}
    if not (hasattr(session_or_io, "get_inputs") and hasattr(session_or_io, "get_outputs")):
        raise TypeError(f"validate_against needs an InferenceSession or an io mapping, got {type(session_or_io)}")
    return {
        "inputs": {a.name: (_normalise_dtype(a.type), len(a.shape)) for a in session_or_io.get_inputs()},
        "outputs": {a.name: (_normalise_dtype(a.type), len(a.shape)) for a in session_or_io.get_outputs()},
    }


def _normalise_dtype(t: object) -> str | None:
    if t is None:
        return None
    return _DTYPE_OF_ORT.get(str(t), str(t))
