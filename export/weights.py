"""A checkpoint's weight files, checked before any model is built: every bad input is an ArtifactError naming the file.

- `weight_files`: model.safetensors, the files a model.safetensors.index.json names (never outside the checkpoint),
  or pytorch_model.bin.
- `check_weights`: the tensor names and shapes the files hold (safetensors: read from the headers alone) against the
  ones the family's architecture builds from config.json, built on torch's meta device: a config that does not match
  its weights (an absurd intermediate_size, a missing hidden_size) fails here, before gigabytes are allocated.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from rerank_runtime._deps import require
from rerank_runtime.errors import ArtifactError

from .families import FamilySpec

INDEX = "model.safetensors.index.json"
_AGAIN = "download or copy the checkpoint again"


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def weight_files(directory: Path) -> list[Path]:
    single, index, binary = directory / "model.safetensors", directory / INDEX, directory / "pytorch_model.bin"
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) and f for f in weight_map.values()):
            raise ArtifactError(f"{index}: 'weight_map' must map tensor names to file names, found {weight_map!r:.80}")
        files = []
        for name in sorted(set(weight_map.values())):
            parts = PurePosixPath(name.replace("\\", "/"))
            if parts.is_absolute() or ".." in parts.parts:
                raise ArtifactError(f"{index}: weight_map file {name!r} is outside the checkpoint directory; a "
                                    "checkpoint's weight files must be inside it")
            if not (directory / name).is_file():
                raise ArtifactError(f"{directory / name} (named in {index.name}) is missing; {_AGAIN}")
            files.append(directory / name)
        return files
    if binary.is_file():
        return [binary]
    raise ArtifactError(f"{directory} has no model.safetensors, {INDEX} or pytorch_model.bin")


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} from a safetensors header, whose framing is checked against the file's size."""
    size = path.stat().st_size

    def corrupt(why: str) -> ArtifactError:
        return ArtifactError(f"{path} is not a valid safetensors file ({why}); {_AGAIN}")

    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt(f"{size} bytes, shorter than the 8-byte header length")
        length = int.from_bytes(head, "little")
        if length > size - 8:
            raise corrupt(f"the header claims {length} bytes, the file has {size - 8} after the length")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise corrupt(f"the header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise corrupt("the header is not a JSON object")
    data, shapes = size - 8 - length, {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not _valid_entry(info, data):
            raise corrupt(f"tensor {name!r} has an invalid entry {info!r:.120} (data holds {data} bytes)")
        shapes[name] = tuple(info["shape"])
    return shapes


def _valid_entry(info: Any, data_bytes: int) -> bool:
    """A safetensors header entry: dtype, non-negative shape, data offsets within the data section."""
    if not (isinstance(info, dict) and isinstance(info.get("dtype"), str) and isinstance(info.get("shape"), list)):
        return False
    offsets = info.get("data_offsets")
    return (all(type(d) is int and d >= 0 for d in info["shape"]) and isinstance(offsets, list) and len(offsets) == 2
            and all(type(o) is int for o in offsets) and 0 <= offsets[0] <= offsets[1] <= data_bytes)


def checkpoint_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.suffix == ".safetensors":
            shapes.update(safetensors_shapes(path))
            continue
        torch = require("torch")
        try:  # memory-mapped: shapes without reading the data
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises several types for a damaged archive
            raise ArtifactError(f"{path} cannot be read as a PyTorch state dict ({exc}); {_AGAIN}") from None
        shapes.update({k: tuple(v.shape) for k, v in state.items()})
    return shapes


def expected_shapes(directory: Path, config: dict[str, Any], family: FamilySpec) -> dict[str, tuple[int, ...]]:
    """{parameter name: shape} of the family's architecture for config.json, built on the meta device (no memory)."""
    torch = require("torch")
    where = directory / "config.json"
    try:
        with torch.device("meta"):
            model = family.build_model(config)
    except KeyError as exc:
        raise ArtifactError(f"{where} has no {exc.args[0]!r}, which the {family.name} architecture needs") from None
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as exc:
        raise ArtifactError(f"{where} does not describe a {family.name} model: {type(exc).__name__}: {exc}") from None
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_weights(directory: Path, config: dict[str, Any], family: FamilySpec) -> None:
    """ArtifactError unless the weight files hold exactly the tensors config.json's architecture needs."""
    files = weight_files(directory)
    expected, found = expected_shapes(directory, config, family), checkpoint_shapes(files)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected) - set(family.ignorable_keys))
    wrong = [f"{k}: config.json implies {list(expected[k])}, the weights hold {list(found[k])}"
             for k in sorted(expected) if k in found and found[k] != expected[k]]
    if missing or unexpected or wrong:
        problems = [*wrong[:3], *([f"missing {missing[:5]}"] if missing else []),
                    *([f"unexpected {unexpected[:5]}"] if unexpected else [])]
        raise ArtifactError(
            f"the tensors in {', '.join(str(f) for f in files)} do not match the {family.name} architecture that "
            f"{directory / 'config.json'} describes: " + "; ".join(problems)
            + "; the config and the weights come from different models"
        )


def load_state_dict(directory: Path) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for path in weight_files(directory):
        try:
            if path.suffix == ".safetensors":
                state.update(require("safetensors.torch").load_file(str(path)))
            else:
                state.update(require("torch").load(path, map_location="cpu", weights_only=True))
        except (ArtifactError, ImportError):
            raise
        except Exception as exc:  # safetensors and torch raise their own types for damaged files
            raise ArtifactError(f"{path} cannot be read ({exc}); {_AGAIN}") from None
    return state
