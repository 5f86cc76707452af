"""Load an export directory (manifest.json + model.onnx [+ external data] + tokenizer.json) into a `Loaded` bundle:
its spec and tokenizer, and a front (front.GraphFront: the manifest's served graph over one backend per device).

Every file is checked before ONNX Runtime (or TensorRT) sees it, so a missing, truncated, corrupt or foreign file is
reported by name: the ONNX protobuf is walked (without the onnx package) far enough to find truncation and every
external-data reference, whose file must exist and be long enough; then every file is compared with the size and
sha256 manifest.json records (hashing can be skipped with verify_hashes=False for very large artifacts, sizes are
always compared), and the tokenizer is re-measured against the manifest's token layout (integrity.py).
"""

from __future__ import annotations

import importlib
import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import (ArtifactError, ManifestMismatchError, ModelNotFoundError, UnknownFamilyError,
                     UnsupportedRequestError)
from .front import GraphFront, ServedGraph, one_backend
from .hints import Remake, default_output, did_you_mean, export_command, warn_user, wrong_kind
from .integrity import check_engine, check_file, check_tokenizer, read_tokenizer
from .kinds import AUTO_RERANKER_MAPPING
from .manifest import MANIFEST_FILE, Manifest
from .onnx_backend import onnx_backends
from .providers import DeviceArg, resolve
from .spec import MODEL_CLASSES, Backend, Loaded


def load_artifact(
    path: str | os.PathLike[str],
    *,
    model_class: str | None = None,
    devices: DeviceArg = None,
    use_fp16: bool | None = None,
    use_bf16: bool | None = None,
    provider: str | None = None,
    session_options: Any = None,
    trt_cache_dir: str | os.PathLike[str] | None = None,
    verify_hashes: bool = True,
) -> Loaded:
    """Check and load an export directory. Precision comes from the artifact: a use_fp16 / use_bf16 it cannot honour
    (True for a precision it does not have, an explicit False for the one it has) gives one warning that names the
    precision served and the command that exports the other; None (the default) says nothing.

    verify_hashes: compare every file's sha256 with the manifest's record (the default); False skips hashing, for
    artifacts so large that reading them twice matters. File sizes and the tokenizer's ids are always checked.
    """
    export_dir, manifest = read_export(path)
    _check_request(manifest, export_dir, model_class, use_fp16, use_bf16)
    tokenizer = _tokenizer(export_dir, manifest, verify_hashes)
    placements = resolve(provider, devices, manifest=manifest, export_dir=export_dir, trt_cache_dir=trt_cache_dir)
    graph = ServedGraph.of(manifest, export_dir)
    if placements[0].provider == "trt-engine":
        if manifest.tensorrt is not None:  # without a record the backend says how to build an engine
            check_engine(export_dir, manifest.tensorrt, verify_hashes)
        backend = _trt_backends(export_dir, manifest, [p.device_id for p in placements])
    else:
        check_model_files(export_dir, manifest, verify_hashes)
        backend = onnx_backends(export_dir, manifest, placements, session_options)
    return Loaded(spec=manifest.spec, tokenizer=tokenizer, front=GraphFront(graph, backend),
                  defaults=dict(manifest.defaults), max_length=manifest.max_length)


def detect_model_class(path: str | os.PathLike[str]) -> str:
    """FlagEmbedding's model_class string recorded in an export directory's manifest."""
    return read_export(path)[1].spec.model_class


def read_export(path: str | os.PathLike[str]) -> tuple[Path, Manifest]:
    """(the export directory, its validated manifest), or an error that says how to make an export there."""
    export_dir = Path(path)
    if not export_dir.exists():
        raise ModelNotFoundError(_not_found(str(path), export_dir))
    if not export_dir.is_dir():
        raise ArtifactError(f"{export_dir} is a file; pass the export directory that holds {MANIFEST_FILE}")
    if not (export_dir / MANIFEST_FILE).is_file():
        if (export_dir / "config.json").is_file():
            raise ArtifactError(
                f"{export_dir} is a Hugging Face checkpoint (config.json, no {MANIFEST_FILE}), not an export; "
                f"export it first: `{export_command(str(export_dir), output=default_output(str(export_dir)))}`"
            )
        raise ArtifactError(
            f"{export_dir} has no {MANIFEST_FILE}, so it is not an export directory; rerank-export writes one: "
            f"`{export_command('<checkpoint>', output=str(export_dir))}`"
        )
    return export_dir, Manifest.read(export_dir)


def _not_found(name: str, path: Path) -> str:
    """No directory at `name`: a hub id or model name gets the export command; a path gets the export directories
    beside it that it may have meant."""
    hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~")) and not path.parent.is_dir()
    if "/" not in name or hub_id:
        output = default_output(name)
        known = did_you_mean(name.split("/")[-1], AUTO_RERANKER_MAPPING) if name.split("/")[-1] not in \
            AUTO_RERANKER_MAPPING else ""
        return (f"{name!r} is not a directory here{known}. rerank_runtime loads export directories written by "
                f"rerank-export, not Hugging Face checkpoints, hub ids or model names: export it first, then load "
                f"the export: `{export_command(name, output=output)}`, then pass {output!r}")
    parent = path.parent
    exports = [str(p) for p in parent.iterdir() if (p / MANIFEST_FILE).is_file()] if parent.is_dir() else []
    return (f"no export directory at {path}{did_you_mean(str(path), exports)}; rerank-export writes one: "
            f"`{export_command('<checkpoint, hub id or built-in model>', output=str(path))}`")


def _check_request(manifest: Manifest, export_dir: Path, model_class: str | None, fp16: bool | None,
                   bf16: bool | None) -> None:
    if model_class is not None:
        if model_class not in MODEL_CLASSES:
            raise UnknownFamilyError(f"model_class {model_class!r} is not one of {list(MODEL_CLASSES)}")
        if model_class != manifest.spec.model_class:
            raise UnsupportedRequestError(wrong_kind(str(export_dir), manifest.spec.model_class, model_class))
    notice = precision_notice(manifest, export_dir, fp16, bf16)
    if notice:
        warn_user(notice)


def precision_notice(manifest: Manifest, export_dir: Path, fp16: bool | None, bf16: bool | None) -> str | None:
    """The one warning for use_fp16 / use_bf16 that the export cannot honour (its precision is fixed at export), as
    FlagEmbedding takes them where harmless: it ignores use_fp16 on the CPU. None: nothing to say (a flag left at
    its default says nothing; an explicit False on an export of that precision does)."""
    served = manifest.precision
    asked = [p for p, flag in (("fp16", fp16), ("bf16", bf16)) if flag]
    refused = [p for p, flag in (("fp16", fp16), ("bf16", bf16)) if flag is False and p == served]
    if asked and served not in asked:
        wanted = asked[0]
        said = f"use_{wanted}=True asks for {wanted}"
    elif refused and not asked:
        wanted = "fp32"
        said = f"use_{served}=False asks for full precision"
    else:
        return None
    remake = Remake.of(manifest, export_dir)
    return (f"{said}, but {export_dir} is a {served} export (an export's precision is fixed when it is made): "
            f"serving {served}. For {wanted}, export it: `{remake.command(precision=wanted)}`")


def _tokenizer(export_dir: Path, manifest: Manifest, verify_hashes: bool) -> Any:
    """tokenizer.json, checked against its file record and the manifest's token layout."""
    path = export_dir / manifest.tokenizer
    if path.is_file():
        check_file(path, manifest.files[manifest.tokenizer], "tokenizer", verify_hashes)
    tokenizer = read_tokenizer(path)
    assert manifest.token_layout is not None  # Manifest.read requires it
    check_tokenizer(tokenizer, manifest.spec, manifest.token_layout, path)
    return tokenizer


def _trt_backends(export_dir: Path, manifest: Manifest, device_ids: Sequence[int]) -> Backend:
    trt_backend = importlib.import_module("rerank_runtime.trt_backend")  # imported only for provider="trt-engine"
    return one_backend([trt_backend.TensorRTBackend(export_dir, manifest, device_id) for device_id in device_ids])


# --- model file checks -----------------------------------------------------------------------------------------------


def check_model_files(export_dir: Path, manifest: Manifest, verify_hashes: bool = True) -> None:
    """Raise ArtifactError naming the file if model.onnx or an external-data file is missing, truncated, corrupt, or
    not the file manifest.json records (size always, sha256 when verify_hashes)."""
    _check_graph_framing(export_dir, manifest)
    labels = manifest.artifact_files()
    for name in (manifest.graph.file, *manifest.graph.external_data):
        check_file(export_dir / name, manifest.files[name], labels[name], verify_hashes)


def _check_graph_framing(export_dir: Path, manifest: Manifest) -> None:
    model = export_dir / manifest.graph.file
    for name in manifest.graph.external_data:
        if not (export_dir / name).is_file():
            raise ArtifactError(f"external data file {export_dir / name} (listed in {MANIFEST_FILE}) is missing; "
                                "copy the whole export directory, or re-export it")
    for location, end in external_refs(model):
        data = model.parent / location
        if location not in manifest.graph.external_data:
            raise ManifestMismatchError(f"{model} stores weights in {location!r}, which {MANIFEST_FILE} does not list "
                                        f"({list(manifest.graph.external_data)}); re-export the artifact")
        if not data.is_file():
            raise ArtifactError(f"external data file {data} (used by {model.name}) is missing; re-export")
        size = data.stat().st_size
        if size < end:
            raise ArtifactError(f"external data file {data} has {size} bytes but {model.name} reads up to byte {end}; "
                                "the file is truncated: copy it again or re-export")


def external_refs(model: Path) -> list[tuple[str, int]]:
    """(location, bytes needed) per external-data file that `model` refers to; validates the protobuf framing."""
    if not model.is_file():
        raise ArtifactError(f"model file {model} is missing; re-export the artifact with `rerank-export`")
    size = model.stat().st_size
    if size == 0:
        raise ArtifactError(f"model file {model} is empty; re-export the artifact")
    needed: dict[str, int] = {}
    with model.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            top = {field: (a, b) for field, wire, a, b in _fields(buf, 0, size) if wire == 2}
            if 7 not in top or 8 not in top:  # ModelProto.graph, ModelProto.opset_import
                raise _Corrupt("no graph or no opset_import")
            for start, end in _graph_tensors(buf, *top[7]):
                location, offset, length = _external(buf, start, end)
                if location is not None:
                    needed[location] = max(needed.get(location, 0), offset + (length or 0))
        except _Corrupt as exc:
            raise ArtifactError(f"model file {model} is truncated or corrupt ({exc}); copy it again or re-export"
                                ) from exc
    return sorted(needed.items())


class _Corrupt(Exception):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= end or shift > 63:
            raise _Corrupt(f"bad varint at byte {pos}")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(buf: Any, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, a, b): a varint's value in a, or a length-delimited field's span [a, b)."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _Corrupt(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, wire, value, value
            continue
        if wire == 2:
            length, pos = _varint(buf, pos, end)
            yield field, wire, pos, pos + length
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise _Corrupt(f"unsupported wire type {wire} at byte {pos}")
        if pos > end:
            raise _Corrupt(f"field {field} runs past the end ({pos} > {end})")


def _graph_tensors(buf: Any, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Spans of every TensorProto in a GraphProto: initializers and node attribute tensors, subgraphs included."""
    for field, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        if field == 5:  # GraphProto.initializer
            yield a, b
        elif field == 1:  # GraphProto.node -> NodeProto.attribute (5)
            for f2, w2, a2, b2 in _fields(buf, a, b):
                if f2 == 5 and w2 == 2:
                    yield from _attribute_tensors(buf, a2, b2)


def _attribute_tensors(buf: Any, start: int, end: int) -> Iterator[tuple[int, int]]:
    for field, wire, a, b in _fields(buf, start, end):
        if wire == 2 and field in (5, 10):  # AttributeProto.t, .tensors
            yield a, b
        elif wire == 2 and field in (6, 11):  # AttributeProto.g, .graphs
            yield from _graph_tensors(buf, a, b)


def _external(buf: Any, start: int, end: int) -> tuple[str | None, int, int | None]:
    """(location, offset, length) of an external TensorProto, else (None, 0, None)."""
    external, entries = False, dict[str, str]()
    for field, wire, a, b in _fields(buf, start, end):
        if field == 14 and wire == 0:  # TensorProto.data_location: 1 = EXTERNAL
            external = a == 1
        elif field == 13 and wire == 2:  # TensorProto.external_data: StringStringEntryProto {key 1, value 2}
            kv = {f: bytes(buf[x:y]).decode("utf-8", "replace") for f, w, x, y in _fields(buf, a, b) if w == 2}
            entries[kv.get(1, "")] = kv.get(2, "")
    if not external:
        return None, 0, None
    try:
        length = int(entries["length"]) if "length" in entries else None
        return entries["location"], int(entries.get("offset", "0")), length
    except (KeyError, ValueError) as exc:
        raise _Corrupt(f"external tensor without a valid location/offset/length: {entries}") from exc
