"""What the TensorRT engine builder and runtime share: the manifest's typed engine record (`EngineRecord`, the
"tensorrt" section of manifest.json, validated on read with the rest of the manifest) and its profiles, profile
choice, the version and GPU checks, and the process's one TensorRT logger. Pure Python except the logger, which
subclasses trt.ILogger on first use; nothing here imports tensorrt itself.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ._deps import install_hint
from .errors import EngineError, UnsupportedRequestError
from .jsonfields import JsonObject

if TYPE_CHECKING:
    from .manifest import Manifest

ENGINE_FILE = "model.engine"
MIN_TENSORRT = (10, 1)  # IExecutionContext.set_device_memory(ptr, size), which CUDA graph capture needs, is 10.1+
Shape = tuple[int, ...]
_RECORD_KEYS = ("engine_file", "engine_bytes", "engine_sha256", "tensorrt_version", "gpu_name", "compute_capability",
                "profiles", "precision_handling", "strongly_typed", "tf32", "builder_optimization_level")
_PROFILE_KEYS = ("index", "min_length", "max_length", "max_batch_size", "shapes")


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
    def from_json(cls, p: JsonObject) -> Profile:
        p.known(_PROFILE_KEYS)
        raw = p.obj("shapes")
        shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
        for name in raw.d:
            levels = raw.obj(name)
            levels.known(("min", "opt", "max"))
            lo, opt, hi = (tuple(levels.integers(k, 1)) for k in ("min", "opt", "max"))
            if not len(lo) == len(opt) == len(hi) or not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise raw.fail(name, "min/opt/max shapes of one rank with min <= opt <= max", levels.d)
            shapes[name] = (lo, opt, hi)
        profile = cls(p.integer("index", 0), p.integer("min_length", 1), p.integer("max_length", 1),
                      p.integer("max_batch_size", 1), shapes)
        if profile.min_length > profile.max_length:
            raise p.fail("max_length", f"at least min_length ({profile.min_length})", profile.max_length)
        return profile


@dataclass(frozen=True)
class EngineRecord:
    """manifest.json's "tensorrt" section: the native engine `rerank-export engine` built beside the graph.

    engine_file/engine_bytes/engine_sha256: the file, checked at load (integrity.check_engine); tensorrt_version and
    compute_capability (gpu_name for messages): where it loads (check_engine_compatibility); profiles: the shapes it
    takes (the backend selects one per batch; ONNX Runtime's TensorRT provider reuses them); precision_handling,
    strongly_typed, tf32 and builder_optimization_level: how it was built (rerank-serve's /info reports them).
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    profiles: tuple[Profile, ...]
    engine_bytes: int
    engine_sha256: str
    precision_handling: str
    strongly_typed: bool
    tf32: bool
    builder_optimization_level: int
    engine_file: str = ENGINE_FILE

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["profiles"] = [p.to_dict() for p in self.profiles]
        return out

    def build_settings(self) -> dict[str, Any]:
        """How the engine was built, for /info."""
        return {"tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability, "precision_handling": self.precision_handling,
                "strongly_typed": self.strongly_typed, "tf32": self.tf32,
                "builder_optimization_level": self.builder_optimization_level,
                "profiles": [f"{p.min_length}..{p.max_length} tokens x {p.max_batch_size} rows" for p in self.profiles]}

    @classmethod
    def from_json(cls, t: JsonObject) -> EngineRecord:
        t.known(_RECORD_KEYS)
        digest = t.sha256("engine_sha256")
        items = t.array("profiles")
        profiles = tuple(Profile.from_json(JsonObject(item, f"{t.path}profiles[{i}].", t.where))
                         for i, item in enumerate(items))
        if not profiles or [p.index for p in profiles] != list(range(len(profiles))):
            raise t.fail("profiles", "a non-empty list of profiles numbered 0, 1, ... in order",
                         [p.index for p in profiles])
        return cls(tensorrt_version=t.text("tensorrt_version"), gpu_name=t.text("gpu_name"),
                   compute_capability=t.text("compute_capability"), profiles=profiles,
                   engine_bytes=t.integer("engine_bytes", 1), engine_sha256=digest,
                   precision_handling=t.text("precision_handling"), strongly_typed=t.boolean("strongly_typed"),
                   tf32=t.boolean("tf32"), builder_optimization_level=t.integer("builder_optimization_level", 0),
                   engine_file=t.filename("engine_file"))


def rebuild_command(export_dir: Path | str, extra: str = "") -> str:
    return f"rerank-export engine {export_dir} --overwrite{extra}"


def engine_record(manifest: Manifest, export_dir: Path | str) -> EngineRecord:
    """The manifest's engine record, or EngineError saying how to build one."""
    if manifest.tensorrt is None:
        raise EngineError(f"{export_dir} has no TensorRT engine (manifest.json 'tensorrt' is null); build one on the "
                          f"GPU that will run it: rerank-export engine {export_dir}")
    return manifest.tensorrt


def check_engine_compatibility(record: EngineRecord, *, tensorrt_version: str, compute_capability: str,
                               gpu_name: str, export_dir: Path | str) -> None:
    """Raise EngineError if the engine was built by another TensorRT version or for another compute capability."""
    problems = []
    if record.tensorrt_version != tensorrt_version:
        problems.append(f"it was built with TensorRT {record.tensorrt_version} but this process runs TensorRT "
                        f"{tensorrt_version} (an engine loads only on the TensorRT version that built it)")
    if record.compute_capability != compute_capability:
        problems.append(f"it was built for compute capability {record.compute_capability} "
                        f"({record.gpu_name}) but this GPU is {compute_capability} ({gpu_name})")
    if problems:
        raise EngineError(f"the TensorRT engine in {export_dir} cannot be used here: " + "; ".join(problems)
                          + f". Rebuild it on this machine: {rebuild_command(export_dir)}")


def select_profile(profiles: Sequence[Profile], batch: int, length: int, export_dir: Path | str,
                   manifest: Manifest | None = None) -> Profile:
    """The profile of the smallest length bucket that holds a [batch, length] batch."""
    for profile in sorted(profiles, key=lambda p: p.max_length):
        if profile.fits(batch, length):
            return profile
    max_len, max_batch = max(p.max_length for p in profiles), max(p.max_batch_size for p in profiles)
    if manifest is not None and length > manifest.max_sequence_length:
        raise UnsupportedRequestError(
            f"the batch is padded to {length} tokens, beyond the {manifest.max_sequence_length} that the artifact in "
            f"{export_dir} was exported for (max_length {manifest.max_length}): pass max_length <= "
            f"{manifest.max_length} or re-export with a larger --max-length")
    problems, flags = [], ""
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
