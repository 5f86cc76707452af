"""A graph's inputs and outputs as manifest.json records them (`GraphInfo`, `TensorSpec`), and their check against
the graph itself (an ONNX Runtime session, or an engine's inputs and outputs)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ManifestMismatchError
from .jsonfields import JsonObject, is_int

# manifest dtype name -> ONNX Runtime's NodeArg.type string
ORT_TYPES = {
    "float32": "tensor(float)", "float16": "tensor(float16)", "bfloat16": "tensor(bfloat16)",
    "float64": "tensor(double)", "int64": "tensor(int64)", "int32": "tensor(int32)",
    "int8": "tensor(int8)", "uint8": "tensor(uint8)", "bool": "tensor(bool)",
}
DTYPE_OF_ORT = {v: k for k, v in ORT_TYPES.items()}


def graph_io(session_or_io: Any) -> dict[str, dict[str, tuple[str | None, int | None]]]:
    """{"inputs"|"outputs": {name: (manifest dtype or None, rank or None)}}."""
    if isinstance(session_or_io, Mapping):
        io: Mapping[str, Any] = session_or_io  # pyright: ignore[reportUnknownVariableType]
        return {side: {name: (normalise_dtype(t), None) for name, t in dict(io.get(side, {})).items()}
                for side in ("inputs", "outputs")}
    if not (hasattr(session_or_io, "get_inputs") and hasattr(session_or_io, "get_outputs")):
        raise TypeError(f"validate_against needs an InferenceSession or an io mapping, got {type(session_or_io)}")
    return {
        "inputs": {a.name: (normalise_dtype(a.type), len(a.shape)) for a in session_or_io.get_inputs()},
        "outputs": {a.name: (normalise_dtype(a.type), len(a.shape)) for a in session_or_io.get_outputs()},
    }


def normalise_dtype(t: object) -> str | None:
    if t is None:
        return None
    return DTYPE_OF_ORT.get(str(t), str(t))


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
    """manifest.json's "graph": the ONNX file, its external data files, its inputs and outputs."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    external_data: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "external_data": list(self.external_data),
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_json(cls, g: JsonObject) -> GraphInfo:
        g.known(("file", "external_data", "inputs", "outputs"))
        names = g.array("external_data")
        if not all(isinstance(n, str) and n and n == os.path.basename(n) for n in names):
            raise g.fail("external_data", "a list of file names inside the export directory", names)
        return cls(file=g.filename("file"), inputs=_tensors(g, "inputs"), outputs=_tensors(g, "outputs"),
                   external_data=tuple(names))

    def check(self, session_or_io: Any, where: str | None = None) -> None:
        """ManifestMismatchError unless a graph's inputs and outputs match these (names, element types and ranks).

        session_or_io: an onnxruntime.InferenceSession (anything with get_inputs()/get_outputs() returning objects
        with .name, .type and .shape), or a mapping {"inputs": {name: dtype}, "outputs": {name: dtype}} whose dtypes
        are manifest names ("int64"), ONNX Runtime type strings ("tensor(int64)") or None (not compared).
        """
        found = graph_io(session_or_io)
        problems: list[str] = []
        for side in ("inputs", "outputs"):
            want = {t.name: t for t in getattr(self, side)}
            have = found[side]
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
                f"manifest.json and {where or self.file} disagree: " + "; ".join(problems)
                + "; the files come from different exports: re-export the artifact with `rerank-export`"
            )


def _tensors(g: JsonObject, key: str) -> tuple[TensorSpec, ...]:
    items = g.array(key)
    if not items:
        raise g.fail(key, "a non-empty list of {name, dtype, shape}", items)
    out: list[TensorSpec] = []
    for i, item in enumerate(items):
        t = JsonObject(item, f"{g.path}{key}[{i}].", g.where)
        shape = t.array("shape")
        if not all((is_int(d) and d >= 1) or (isinstance(d, str) and d) for d in shape):
            raise t.fail("shape", "a list of positive ints or axis names", shape)
        out.append(TensorSpec(t.text("name"), t.choice("dtype", tuple(ORT_TYPES)), tuple(shape)))
    return tuple(out)
