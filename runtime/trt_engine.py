"""What the TensorRT engine builder and runtime share: the manifest's engine record and its profiles, profile choice,
the version and GPU checks, and the process's one TensorRT logger. Pure Python except the logger, which subclasses
trt.ILogger on first use; nothing here imports tensorrt itself.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ._deps import install_hint
from .compression import served_stages
from .errors import ArtifactError, EngineError, UnsupportedRequestError
from .spec import GraphRequest

ENGINE_FILE = "model.engine"
MIN_TENSORRT = (10, 1)  # IExecutionContext.set_device_memory(ptr, size), which CUDA graph capture needs, is 10.1+
Shape = tuple[int, ...]
_SECTION_KEYS = ("tensorrt_version", "compute_capability", "gpu_name", "engine_file", "engine_bytes", "profiles")


@dataclass(frozen=True)
class Profile:
    """One optimisation profile: rows 1..max_batch_size, padded lengths min_length..max_length (one bucket)."""

    index: int
    min_length: int
    max_length: int
    max_batch_size: int
    shapes: dict[str, tuple[Shape, Shape, Shape]]  # input name -> (min, opt, max)

    def fits(self, batch: int, length: int) -> bool:
        return 1 <= batch <= self.max_batch_size and self.min_length <= length <= self.max_length

    def to_dict(self) -> dict[str, Any]:
        shapes = {n: {"min": list(lo), "opt": list(opt), "max": list(hi)} for n, (lo, opt, hi) in self.shapes.items()}
        return {"index": self.index, "min_length": self.min_length, "max_length": self.max_length,
                "max_batch_size": self.max_batch_size, "shapes": shapes}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profile:
        shapes = {n: (tuple(s["min"]), tuple(s["opt"]), tuple(s["max"])) for n, s in d["shapes"].items()}
        return cls(int(d["index"]), int(d["min_length"]), int(d["max_length"]), int(d["max_batch_size"]), shapes)


def rebuild_command(export_dir: Path | str, extra: str = "") -> str:
    return f"rerank-export engine {export_dir} --overwrite{extra}"


def engine_section(manifest: Mapping[str, Any], export_dir: Path | str) -> dict[str, Any]:
    """The manifest's "tensorrt" section, checked for the keys the runtime reads."""
    section = manifest.get("tensorrt")
    if not section:
        raise EngineError(f"{export_dir} has no TensorRT engine (manifest.json 'tensorrt' is null); build one on the "
                          f"GPU that will run it: rerank-export engine {export_dir}")
    missing = [k for k in _SECTION_KEYS if k not in section]
    if missing:
        raise ArtifactError(f"manifest.json in {export_dir}: the 'tensorrt' section lacks {missing} (expected "
                            f"{list(_SECTION_KEYS)}); rebuild the engine: {rebuild_command(export_dir)}")
    return dict(section)


def profiles_from_section(section: Mapping[str, Any]) -> list[Profile]:
    return [Profile.from_dict(p) for p in section["profiles"]]


def check_engine_compatibility(section: Mapping[str, Any], *, tensorrt_version: str, compute_capability: str,
                               gpu_name: str, export_dir: Path | str) -> None:
    """Raise EngineError if the engine was built by another TensorRT version or for another compute capability."""
    problems = []
    if str(section["tensorrt_version"]) != tensorrt_version:
        problems.append(f"it was built with TensorRT {section['tensorrt_version']} but this process runs TensorRT "
                        f"{tensorrt_version} (an engine loads only on the TensorRT version that built it)")
    if str(section["compute_capability"]) != compute_capability:
        problems.append(f"it was built for compute capability {section['compute_capability']} "
                        f"({section['gpu_name']}) but this GPU is {compute_capability} ({gpu_name})")
    if problems:
        raise EngineError(f"the TensorRT engine in {export_dir} cannot be used here: " + "; ".join(problems)
                          + f". Rebuild it on this machine: {rebuild_command(export_dir)}")


def select_profile(profiles: list[Profile], batch: int, length: int, export_dir: Path | str,
                   manifest: Mapping[str, Any] | None = None) -> Profile:
    """The profile of the smallest length bucket that holds a [batch, length] batch."""
    for profile in sorted(profiles, key=lambda p: p.max_length):
        if profile.fits(batch, length):
            return profile
    max_len, max_batch = max(p.max_length for p in profiles), max(p.max_batch_size for p in profiles)
    limit = int(manifest["max_sequence_length"]) if manifest else None
    problems, flags = [], ""
    if limit is not None and length > limit:
        exported = manifest.get("max_length") if manifest else None
        raise UnsupportedRequestError(
            f"the batch is padded to {length} tokens, beyond the {limit} that the artifact in {export_dir} was "
            f"exported for (max_length {exported}): pass max_length <= {exported} or re-export with a larger "
            "--max-length")
    if length > max_len:
        problems.append(f"the batch is padded to {length} tokens but the engine's longest profile takes {max_len}")
        flags += f" --max-length {length}"
    if batch > max_batch:
        problems.append(f"the batch has {batch} rows but the engine takes at most {max_batch}")
        flags += f" --max-batch-size {batch}"
    if not problems:
        problems.append(f"no profile covers {batch} rows x {length} tokens (profiles: "
                        + ", ".join(f"{p.min_length}..{p.max_length} x {p.max_batch_size}" for p in profiles) + ")")
    raise UnsupportedRequestError("; ".join(problems) + ". Lower batch_size / max_length, or rebuild the engine: "
                                  + rebuild_command(export_dir, flags))


def check_request(manifest: Mapping[str, Any], request: GraphRequest) -> None:
    """The artifact has every requested output and was exported with the requested compression."""
    outputs = [o["name"] for o in manifest["graph"]["outputs"]]
    missing = [n for n in request.output_names if n not in outputs]
    if missing:
        heads = ", ".join(f"layer {layer} (head {head})" for layer, head in manifest.get("exits", []))
        raise UnsupportedRequestError(f"the artifact has no output {missing}; it serves {heads or repr(outputs)}. "
                                      "Export another artifact with the cutoff layers you need")
    ratio, layers = int(manifest.get("compress_ratio", 1)), tuple(manifest.get("compress_layers", ()))
    if (request.compress_ratio, tuple(request.compress_layers)) != served_stages(ratio, layers, request.exits):
        raise UnsupportedRequestError(
            f"requested compress_ratio={request.compress_ratio}, compress_layers={list(request.compress_layers)} but "
            f"the artifact was exported with compress_ratio={ratio}, compress_layers={list(layers)}; pass those, "
            "or export another artifact with the settings you need")


def check_tensorrt_version(trt: ModuleType) -> tuple[int, int]:
    """(major, minor) of this TensorRT, or EngineError if it is older than MIN_TENSORRT."""
    try:
        major, minor = (int(part) for part in str(trt.__version__).split(".")[:2])
    except ValueError as exc:
        raise EngineError(f"cannot read the TensorRT version {trt.__version__!r}; expected 'MAJOR.MINOR...'") from exc
    if (major, minor) < MIN_TENSORRT:
        raise EngineError(f"TensorRT {trt.__version__} is too old: engines need TensorRT "
                          f"{'.'.join(map(str, MIN_TENSORRT))} or newer (10.0 lacks set_device_memory(ptr, size), "
                          f"which CUDA graphs need); install a newer one: {install_hint('trt')}")
    return major, minor


_LOGGER: Any = None
_LOGGER_LOCK = threading.Lock()


def trt_logger(trt: ModuleType) -> Any:
    """The process's one TensorRT logger.

    TensorRT keeps the first ILogger a process hands it and sends every later Builder's and Runtime's messages there,
    so a logger per object would leave the second one's errors unheard. This one prints warnings and errors to stderr
    and hands each error to the captures open at that moment (`with logger.capture() as errors:`): the capture of the
    thread that logged it, or, for TensorRT's own worker threads, every open capture.
    """
    global _LOGGER
    with _LOGGER_LOCK:
        if _LOGGER is None or _LOGGER.trt is not trt:  # a new module object only in tests (fake modules)
            _LOGGER = _make_logger(trt)
        return _LOGGER


def _make_logger(trt: ModuleType) -> Any:
    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.trt = trt
            self._open: dict[int, list[list[str]]] = {}  # thread id -> stack of open captures
            self._lock = threading.Lock()

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                with self._lock:
                    own = self._open.get(threading.get_ident())
                    targets = [own[-1]] if own else [stack[-1] for stack in self._open.values()]
                for errors in targets:
                    errors.append(msg)
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                print(f"[TensorRT] {msg}", file=sys.stderr)

        @contextmanager
        def capture(self) -> Iterator[list[str]]:
            errors: list[str] = []
            ident = threading.get_ident()
            with self._lock:
                self._open.setdefault(ident, []).append(errors)
            try:
                yield errors
            finally:
                with self._lock:
                    stack = self._open[ident]
                    stack.pop()
                    if not stack:
                        del self._open[ident]

    return _Logger()


def logged(errors: list[str], default: str) -> str:
    """The last errors TensorRT logged during a call, or what to say when it logged none."""
    return "; ".join(errors[-3:]) or default
