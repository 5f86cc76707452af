"""Graph inputs and outputs as the manifest compares them: ONNX Runtime's type strings and the manifest's dtypes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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
