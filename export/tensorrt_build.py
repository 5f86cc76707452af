"""Build a native TensorRT engine for an export directory: `rerank-export engine <dir>`.

One optimisation profile per length bucket (64, 128, 256, ... up to max_length) so that short batches do not pay for
long ones; the engine goes to `<dir>/model.engine`, and `manifest.with_engine(record).write(dir)` records it in the
manifest's typed "tensorrt" section (trt_engine.EngineRecord): what the runtime checks before loading it (size and
sha256, TensorRT version, compute capability), its profiles, and how it was built.

Precision: the ONNX graph is mixed precision by construction (fp16/bf16 matmul weights; norms, residual stream,
softmax and score heads in fp32), so every build is strongly typed by default, on TensorRT 10 as on 11: each tensor
keeps the type the graph gives it. TensorRT 10 can still build weakly typed (strongly_typed=False: BuilderFlag.FP16/
BF16 with the layers the graph computes in fp32 pinned to fp32, APIs deprecated since 10.12); TensorRT 11 cannot.

NOT RUN ON A GPU YET. plan_profiles, the options, the typing choice and the manifest recording are pure Python and
tested on CPU; the TensorRT calls are checked by the trt-marked tests and benchmarks/gpu_check.py on a GPU machine.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from rerank_runtime._deps import require
from rerank_runtime.artifact import read_export
from rerank_runtime.cudart import CudaRuntime, DeviceInfo
from rerank_runtime.errors import ArtifactError, EngineError, ExportError, ManifestMismatchError
from rerank_runtime.integrity import atomic_write
from rerank_runtime.manifest import MANIFEST_FILE, Manifest
from rerank_runtime.providers import DEFAULT_MAX_BATCH
from rerank_runtime.compression import plan_inputs
from rerank_runtime.spec import TOKEN_INPUTS
from rerank_runtime.trt_engine import (ENGINE_FILE, EngineRecord, Profile, Shape, check_tensorrt_version, logged,
                                       trt_logger)

TIMING_CACHE = "timing.cache"
FIRST_BUCKET = 64
_MONITOR_DEPTH = 2  # nested builder phases deeper than this are not reported


@dataclass(frozen=True)
class EngineOptions:
    max_batch_size: int = DEFAULT_MAX_BATCH  # FlagEmbedding's default batch_size, so default calls fit the engine
    opt_batch_size: int | None = None  # the batch TensorRT tunes kernels for; None: max_batch_size
    max_length: int | None = None  # None: the manifest's max_sequence_length
    length_buckets: tuple[int, ...] | None = None  # bucket upper bounds; None: 64, 128, 256, ... then max_length
    workspace_bytes: int | None = None  # None: TensorRT's default (all device memory)
    timing_cache: Path | None = None  # None: <export_dir>/timing.cache, reused across builds
    builder_optimization_level: int = 3  # 0..5
    strongly_typed: bool = True  # False: TensorRT 10 weak typing (deprecated there since 10.12; 11 refuses it)
    tf32: bool = False  # TensorRT enables TF32 by default; off keeps fp32 artifacts at fp32 accuracy
    device_id: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ExportError:
            return ExportError(f"EngineOptions.{name} must be {expected}, got {getattr(self, name)!r}")

        for name in ("max_batch_size", "opt_batch_size", "max_length", "workspace_bytes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise bad(name, "a positive int" + ("" if name == "max_batch_size" else " or None"))
        if self.opt_batch_size is not None and self.opt_batch_size > self.max_batch_size:
            raise bad("opt_batch_size", f"at most max_batch_size ({self.max_batch_size})")
        buckets = self.length_buckets
        if buckets is not None and (not buckets or any(not isinstance(b, int) or b < 1 for b in buckets)
                                    or list(buckets) != sorted(set(buckets))):
            raise bad("length_buckets", "a non-empty, strictly ascending tuple of positive ints")
        if self.builder_optimization_level not in range(6):
            raise bad("builder_optimization_level", "an int in 0..5")
        if self.device_id < 0:
            raise bad("device_id", "a CUDA device index >= 0")
        if not isinstance(self.strongly_typed, bool):
            raise bad("strongly_typed", "True (the default) or False (TensorRT 10 weak typing)")


def length_buckets(max_length: int, buckets: tuple[int, ...] | None = None) -> list[int]:
    """Bucket upper bounds. max_length always closes the last bucket."""
    if buckets is not None:
        too_long = [b for b in buckets if b > max_length]
        if too_long:
            raise ExportError(f"length buckets {too_long} exceed max_length {max_length}; "
                                          "drop them or raise max_length")
        return list(buckets) + ([max_length] if buckets[-1] < max_length else [])
    out, bound = [], FIRST_BUCKET
    while bound < max_length:
        out.append(bound)
        bound *= 2
    if out and max_length < out[-1] * 5 // 4:  # no sliver bucket: 512 then 530 becomes one bucket up to 530
        out.pop()
    return out + [max_length]


def resolve_max_length(manifest: Manifest, options: EngineOptions) -> int:
    limit = manifest.max_sequence_length
    if options.max_length is None:
        return limit
    if options.max_length > limit:
        raise ExportError(f"max_length {options.max_length} exceeds the artifact's max_sequence_length "
                                      f"{limit} (the longest batch its graph was exported for); use at most {limit} "
                                      "or re-export with a larger max_length")
    return options.max_length


def _input_stages(manifest: Manifest) -> dict[str, int]:
    """Input name -> 0 for token inputs, k + 1 for compression stage k's plan (index and weight); the manifest
    guarantees that these are the graph's inputs."""
    plans = {name: i // 2 + 1 for i, name in enumerate(plan_inputs(manifest.stages()))}
    return {**{n: 0 for n in TOKEN_INPUTS}, **plans}


def plan_profiles(manifest: Manifest, options: EngineOptions) -> tuple[Profile, ...]:
    """min/opt/max shapes of every graph input for every length bucket."""
    max_length = resolve_max_length(manifest, options)
    stages = _input_stages(manifest)
    ratio = manifest.compress_ratio
    max_b, opt_b = options.max_batch_size, options.opt_batch_size or options.max_batch_size
    profiles, low = [], 1
    for index, high in enumerate(length_buckets(max_length, options.length_buckets)):
        shapes: dict[str, tuple[Shape, Shape, Shape]] = {}
        for name, stage in stages.items():
            if stage == 0:
                shapes[name] = ((1, low), (opt_b, high), (max_b, high))
            else:  # a compressed length never exceeds the uncompressed one: ql + ceil(p / r) + pl <= ql + p + pl;
                # stage k typically divides the passage by r ** (k + 1), which sets the length kernels are tuned for
                opt = min(high, max(1, math.ceil(high / ratio**stage)))
                shapes[name] = ((1, 1, ratio), (opt_b, opt, ratio), (max_b, high, ratio))
        profiles.append(Profile(index, low, high, max_b, shapes))
        low = high + 1
    return tuple(profiles)


class _Clock:
    def __init__(self, progress: Callable[[str], None]) -> None:
        self._progress, self._start, self._lock = progress, time.perf_counter(), threading.Lock()

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def report(self, message: str) -> None:  # TensorRT calls the monitor from several builder threads
        with self._lock:
            self._progress(f"[{self.elapsed():7.1f}s] {message}")


def build_environment(options: EngineOptions) -> tuple[ModuleType, CudaRuntime, DeviceInfo]:
    """TensorRT, the CUDA runtime and the GPU an engine is built on, or the error that says what is missing; cheap,
    so `rerank-export --tensorrt` checks it before the ONNX export starts."""
    trt, cuda = require("tensorrt"), CudaRuntime()
    return trt, cuda, cuda.device_info(options.device_id)


def build_engine(export_dir: Path | str, options: EngineOptions | None = None,
                 progress: Callable[[str], None] = print) -> Path:
    """Build <export_dir>/model.engine for GPU options.device_id and record it in manifest.json.

    Files are written whole or not at all: engine and timing cache by write-then-rename, then the manifest the same
    way. (The runtime compares the engine's size with the manifest's record, which catches a crash in between.)
    """
    export_dir, manifest = read_export(export_dir)
    options = options or EngineOptions()
    profiles = plan_profiles(manifest, options)
    onnx_path: Path = export_dir / manifest.graph.file
    engine_path: Path = export_dir / ENGINE_FILE
    if not onnx_path.is_file():
        raise ArtifactError(f"{onnx_path} is missing; re-export the artifact")
    if engine_path.exists() and not options.overwrite:
        raise ExportError(f"{engine_path} exists; pass overwrite=True (--overwrite) to replace it")
    trt, cuda, device = build_environment(options)
    cuda.set_device(options.device_id)
    precision = manifest.precision
    strongly_typed = _typing(trt, precision, options, device)
    clock = _Clock(progress)
    clock.report(f"TensorRT {trt.__version__} on {device.name} (compute {device.compute_capability}): {precision} "
                 f"artifact, {len(profiles)} profiles up to {profiles[-1].max_length} tokens x "
                 f"{options.max_batch_size} rows")
    cache_path = options.timing_cache or export_dir / TIMING_CACHE
    data, handling = _build(trt, onnx_path, manifest, options, profiles, strongly_typed, cache_path, clock)
    atomic_write(engine_path, data)
    record = EngineRecord(
        tensorrt_version=trt.__version__, gpu_name=device.name, compute_capability=device.compute_capability,
        profiles=profiles, engine_bytes=data.nbytes, engine_sha256=hashlib.sha256(data).hexdigest(),
        precision_handling=handling, strongly_typed=strongly_typed, tf32=options.tf32,
        builder_optimization_level=options.builder_optimization_level)
    manifest.with_engine(record).write(export_dir)
    clock.report(f"wrote {engine_path} ({data.nbytes / 2**20:.1f} MiB) and recorded it in {MANIFEST_FILE}")
    return engine_path


def _build(trt: ModuleType, onnx_path: Path, manifest: Manifest, options: EngineOptions,
           profiles: tuple[Profile, ...], strongly_typed: bool, cache_path: Path,
           clock: _Clock) -> tuple[memoryview, str]:
    """Parse, configure, build; writes the timing cache. Returns (plan bytes, how the network was typed)."""
    logger = trt_logger(trt)
    builder, network, _parser = _parse(trt, logger, onnx_path, strongly_typed, manifest)
    clock.report(f"parsed {onnx_path.name}: {network.num_layers} layers")
    config, handling = _configure(trt, builder, network, manifest.precision, strongly_typed, options, profiles)
    _cache = _use_timing_cache(config, cache_path, clock)  # the cache must outlive the build
    monitor = _monitor(trt, clock)
    if monitor is not None:
        config.progress_monitor = monitor
    clock.report(f"building ({handling})")
    started = clock.elapsed()
    with logger.capture() as errors:
        plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError(f"TensorRT could not build an engine from {onnx_path}: "
                          + logged(errors, "no error was logged"))
    clock.report(f"built in {clock.elapsed() - started:.1f} s")
    atomic_write(cache_path, memoryview(config.get_timing_cache().serialize()).cast("B"))
    return memoryview(plan).cast("B"), handling


def _typing(trt: ModuleType, precision: str, options: EngineOptions, device: DeviceInfo) -> bool:
    """Whether to build a strongly typed network; refuses what this TensorRT or GPU cannot do."""
    major, _ = check_tensorrt_version(trt)
    if precision not in ("fp32", "fp16", "bf16"):
        raise EngineError(f"precision {precision!r} in manifest.json: engines are built for fp32, fp16 or bf16")
    if precision == "bf16" and device.major < 8:
        raise EngineError(f"bf16 artifact but {device.name} has compute capability {device.compute_capability}; "
                          "bf16 needs 8.0+ (Ampere or newer): export an fp16 or fp32 artifact for this GPU")
    if major >= 11 and not options.strongly_typed:
        raise EngineError(f"strongly_typed=False (weak typing) needs TensorRT 10, but this is TensorRT "
                          f"{trt.__version__}, whose networks are always strongly typed; keep the default "
                          "strongly_typed=True")
    return options.strongly_typed


def _parser_error(err: Any) -> str:
    return f"{err.desc()} (node {err.node_name()!r}, operator {err.node_operator()}, code {err.code()})"


def _parse(trt: ModuleType, logger: Any, onnx_path: Path, strongly_typed: bool,
           manifest: Manifest) -> tuple[Any, Any, Any]:
    with logger.capture() as errors:
        try:
            builder = trt.Builder(logger)  # TypeError on a machine without a usable CUDA device
        except TypeError as exc:
            raise EngineError(f"TensorRT could not create a builder ({exc}; {logged(errors, 'no message')}); "
                              "is an NVIDIA GPU visible to this process?") from exc
    major, _ = check_tensorrt_version(trt)
    # TensorRT 10: strong typing is a creation flag; TensorRT 11: always strongly typed (the flag is ignored)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed and major == 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # the path API resolves external data beside the model
        errors = "\n  ".join(_parser_error(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejected {onnx_path}:\n  {errors}\nThis TensorRT cannot take "
                          "these nodes; try a newer TensorRT or use the ONNX Runtime providers (cuda, tensorrt)")
    names = ({network.get_input(i).name for i in range(network.num_inputs)},
             {network.get_output(i).name for i in range(network.num_outputs)})
    expected = ({t.name for t in manifest.graph.inputs}, {t.name for t in manifest.graph.outputs})
    if names != expected:
        raise ManifestMismatchError(f"{onnx_path} has inputs/outputs {sorted(names[0])} / {sorted(names[1])} "
                                    f"but manifest.json says {sorted(expected[0])} / {sorted(expected[1])}")
    return builder, network, parser


def _configure(trt: ModuleType, builder: Any, network: Any, precision: str, strongly_typed: bool,
               options: EngineOptions, profiles: tuple[Profile, ...]) -> tuple[Any, str]:
    config = builder.create_builder_config()
    if options.workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.builder_optimization_level
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if tf32 is not None and not options.tf32:
        config.clear_flag(tf32)
    for profile in profiles:
        shape_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile.shapes.items():
            shape_profile.set_shape(name, min=lo, opt=opt, max=hi)
        if config.add_optimization_profile(shape_profile) != profile.index:
            raise EngineError(f"TensorRT numbered optimisation profile {profile.index} differently; report this bug")
    if strongly_typed:
        return config, "strongly typed: every tensor has the type the ONNX graph gives it"
    if precision == "fp32":
        return config, "fp32, weakly typed, no reduced-precision flags"
    config.set_flag(trt.BuilderFlag.FP16 if precision == "fp16" else trt.BuilderFlag.BF16)
    pinned = _pin_fp32_layers(trt, network)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    return config, (f"TensorRT 10 weak typing: BuilderFlag.{precision.upper()}, {pinned} layers that the ONNX graph "
                    "computes in fp32 pinned to fp32 (OBEY_PRECISION_CONSTRAINTS)")


def _pin_fp32_layers(trt: ModuleType, network: Any) -> int:
    """Keep in fp32 every computing layer whose outputs the ONNX graph types as fp32 (TensorRT 10 only)."""
    skip = {trt.LayerType.CONSTANT, trt.LayerType.SHAPE, trt.LayerType.CAST, trt.LayerType.IDENTITY}
    pinned = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ILayer.precision: deprecated in 10.12, gone in 11
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
            if layer.type in skip or not outputs or any(t.dtype != trt.float32 for t in outputs):
                continue
            layer.precision = trt.float32
            for j in range(len(outputs)):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def _use_timing_cache(config: Any, path: Path, clock: _Clock) -> Any:
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if config.set_timing_cache(cache, ignore_mismatch=False):
        if data:
            clock.report(f"reusing the timing cache {path}")
        return cache
    clock.report(f"timing cache {path} was made on another GPU or TensorRT version: starting a new one "
                 "(it will be overwritten)")
    cache = config.create_timing_cache(b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        raise EngineError("TensorRT refused an empty timing cache; report this bug")
    return cache


def _monitor(trt: ModuleType, clock: _Clock) -> Any:
    """An IProgressMonitor (TensorRT 10+) reporting builder phases with the elapsed time; None if unavailable."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        clock.report("this TensorRT has no IProgressMonitor: no per-phase progress until the build ends")
        return None

    class _Monitor(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.depth[phase_name] = depth
            if depth < _MONITOR_DEPTH:
                clock.report(f"{'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            depth = self.depth.get(phase_name, 0)
            if depth < _MONITOR_DEPTH:
                clock.report(f"{'  ' * depth}{phase_name} done")

    return _Monitor()
