"""Runs an export directory's native TensorRT engine (`model.engine`, built by `rerank-export engine <dir>`).

`TensorRTBackend` implements spec.Backend. The pure parts (profiles recorded in the manifest, the version/GPU check,
profile selection, request checks) run and are tested on CPU. NOT RUN IN CI: everything that touches TensorRT or
CUDA, written from /work/shared/reference/gpu-apis.md sections 1.5, 1.6, 2.3 and 2.4 without a GPU; the trt-marked
tests in tests/test_tensorrt.py and benchmarks/gpu_check.py are the checks to run on one.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from collections.abc import Mapping
from typing import Any

import numpy as np

from ._deps import require
from .cudart import CudaRuntime, DeviceBuffer, PinnedBuffer
from .compression import pass_through_stages, served_stages
from .errors import ArtifactError, EngineError, ManifestMismatchError, UnsupportedRequestError
from .spec import GraphRequest

ENGINE_FILE = "model.engine"
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


def capturing_logger(trt: ModuleType) -> Any:
    """A trt.ILogger that prints warnings and errors to stderr and keeps the errors for our messages."""

    class _Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return _Logger()


@dataclass
class _Graph:
    context: Any
    scratch: int  # the context's own device memory (USER_MANAGED), sized for the captured shapes
    graph_exec: Any


class TensorRTBackend:
    """spec.Backend over model.engine on one GPU. run() is thread-safe (one lock around the context and stream).

    use_cuda_graphs: batches of at most `cuda_graph_max_batch` rows are captured once per (profile, input shapes),
    each in its own execution context (a graph fixes the context's state), and replayed after that.
    """

    concurrency = 1

    def __init__(self, export_dir: Path, manifest: dict[str, Any], device_id: int = 0, *,
                 use_cuda_graphs: bool = False, cuda_graph_max_batch: int = 4, max_cuda_graphs: int = 16) -> None:
        self.export_dir, self.manifest, self.device_id = Path(export_dir), manifest, device_id
        self.use_cuda_graphs, self.cuda_graph_max_batch = use_cuda_graphs, cuda_graph_max_batch
        self.max_cuda_graphs = max_cuda_graphs
        section = engine_section(manifest, self.export_dir)
        self.profiles = profiles_from_section(section)
        path = self.export_dir / section["engine_file"]
        if not path.is_file() or path.stat().st_size != int(section["engine_bytes"]):
            found = f"{path.stat().st_size} bytes" if path.is_file() else "no file"
            raise ArtifactError(f"{path}: expected the {section['engine_bytes']}-byte engine that manifest.json "
                                f"records, found {found}; rebuild it: {rebuild_command(self.export_dir)}")
        self._trt, self._cuda = require("tensorrt"), CudaRuntime()
        device = self._cuda.device_info(device_id)
        check_engine_compatibility(section, tensorrt_version=self._trt.__version__, gpu_name=device.name,
                                   compute_capability=device.compute_capability, export_dir=self.export_dir)
        self._cuda.set_device(device_id)
        self._logger = capturing_logger(self._trt)
        self._runtime = self._trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:  # TensorRT returns None; the reason went to the logger
            raise EngineError(f"TensorRT could not deserialize {path}: {'; '.join(self._logger.errors) or 'no message'}"
                              f". Rebuild it on this machine: {rebuild_command(self.export_dir)}")
        self._dtypes, self._inputs = self._describe_io()
        self._check_engine_profiles()
        self._stream = self._cuda.stream_create()
        self._stream_handle = CudaRuntime.handle(self._stream)
        self._device = {name: DeviceBuffer(self._cuda) for name in self._dtypes}
        self._host = {name: PinnedBuffer(self._cuda) for name in self._dtypes}
        self._contexts: dict[int, Any] = {}
        self._graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()
        self._lock = threading.Lock()
        if use_cuda_graphs:  # graphs capture buffer addresses: size them once so that they never move
            self._reserve({n: max(int(np.prod(p.shapes[n][2])) for p in self.profiles) for n in self._inputs},
                          max(p.max_batch_size for p in self.profiles))

    # Backend protocol ----------------------------------------------------------------------------------------
    def check(self, request: GraphRequest) -> None:
        check_request(self.manifest, request)

    def run(self, request: GraphRequest, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        stages, planned = len(self.manifest.get("compress_layers", ())), len(request.compress_layers)
        if stages > planned:
            feeds = pass_through_stages(feeds, planned, stages, int(self.manifest["compress_ratio"]))
        missing = [n for n in self._inputs if n not in feeds]
        if missing:
            raise UnsupportedRequestError(f"feeds lack {missing}; the engine takes {self._inputs}")
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self._inputs}
        batch, length = arrays["input_ids"].shape
        profile = select_profile(self.profiles, batch, length, self.export_dir, self.manifest)
        with self._lock:
            if self._stream is None:
                raise EngineError(f"this TensorRTBackend for {self.export_dir} was closed; create a new one")
            self._cuda.set_device(self.device_id)  # the current device is per thread
            outputs = self._execute(profile, arrays, batch)
        return [outputs[name] for name in request.output_names]

    def close(self) -> None:
        with self._lock:
            while self._graphs:
                self._drop_graph(self._graphs.popitem(last=False)[1])
            self._contexts.clear()
            for device in self._device.values():
                device.release()
            for host in self._host.values():
                host.release()
            if self._stream is not None:
                self._cuda.stream_destroy(self._stream)
                self._stream = None

    def __enter__(self) -> TensorRTBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # engine facts --------------------------------------------------------------------------------------------
    def _describe_io(self) -> tuple[dict[str, np.dtype[Any]], list[str]]:
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        graph = self.manifest["graph"]
        want_in, want_out = {i["name"] for i in graph["inputs"]}, {o["name"] for o in graph["outputs"]}
        outputs = set(names) - set(inputs)
        if set(inputs) != want_in or outputs != want_out:
            raise ManifestMismatchError(
                f"{self.export_dir}: the engine has inputs {sorted(inputs)} and outputs {sorted(outputs)}"
                f" but manifest.json says {sorted(want_in)} and {sorted(want_out)}; rebuild: "
                + rebuild_command(self.export_dir))
        return dtypes, inputs

    def _check_engine_profiles(self) -> None:
        engine = self._engine
        recorded = {p.index: p for p in self.profiles}
        if engine.num_optimization_profiles != len(recorded):
            raise ManifestMismatchError(f"{self.export_dir}: the engine has {engine.num_optimization_profiles} "
                                        f"profiles, manifest.json records {len(recorded)}; rebuild: "
                                        + rebuild_command(self.export_dir))
        for k, profile in recorded.items():
            for name in self._inputs:
                actual = tuple(tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(name, k))
                if actual != profile.shapes[name]:
                    raise ManifestMismatchError(f"{self.export_dir}: profile {k} of the engine gives {name} "
                                                f"min/opt/max {actual}, manifest.json {profile.shapes[name]}")

    # execution -----------------------------------------------------------------------------------------------
    def _new_context(self, index: int, strategy: Any) -> Any:
        engine = self._engine
        if hasattr(engine, "create_runtime_config"):  # TensorRT >= 10.11: strategy through IRuntimeConfig
            config = engine.create_runtime_config()
            config.set_execution_context_allocation_strategy(strategy)
            ctx = engine.create_execution_context(runtime_config=config)
        else:
            ctx = engine.create_execution_context(strategy=strategy)
        if ctx is None:
            raise EngineError(f"TensorRT could not create an execution context on GPU {self.device_id} "
                              f"({'; '.join(self._logger.errors) or 'out of device memory?'})")
        ctx.set_optimization_profile_async(index, self._stream_handle)  # new contexts start on profile 0
        self._cuda.stream_synchronize(self._stream)
        return ctx

    def _context(self, index: int) -> Any:
        if index not in self._contexts:
            strategy = self._trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE  # memory for its own profile
            self._contexts[index] = self._new_context(index, strategy)
        return self._contexts[index]

    def _reserve(self, input_elements: dict[str, int], batch: int) -> bool:
        moved = False
        for name in self._dtypes:
            count = input_elements[name] if name in self._inputs else batch
            nbytes = count * self._dtypes[name].itemsize
            moved |= self._device[name].ensure(nbytes)
            self._host[name].ensure(nbytes)
        return moved

    def _execute(self, profile: Profile, arrays: dict[str, np.ndarray], batch: int) -> dict[str, np.ndarray]:
        if self._reserve({n: a.size for n, a in arrays.items()}, batch):
            while self._graphs:  # a device buffer moved: captured addresses are stale
                self._drop_graph(self._graphs.popitem(last=False)[1])
        for name, arr in arrays.items():
            self._host[name].view(arr.dtype, arr.size)[:] = arr.ravel()
            self._cuda.copy_to_device_async(self._device[name].ptr, self._host[name].ptr, arr.nbytes, self._stream)
        key = (profile.index, *(a.shape for a in arrays.values()))
        if self.use_cuda_graphs and batch <= self.cuda_graph_max_batch:
            if key in self._graphs:
                self._graphs.move_to_end(key)
                self._cuda.launch(self._graphs[key].graph_exec, self._stream)
            else:
                self._graphs[key] = self._capture(profile.index, arrays, batch)  # its warm-up computed the outputs
                if len(self._graphs) > self.max_cuda_graphs:
                    self._drop_graph(self._graphs.popitem(last=False)[1])
        else:
            ctx = self._context(profile.index)
            self._bind(ctx, arrays, batch)
            self._enqueue(ctx)
        outputs = [n for n in self._dtypes if n not in self._inputs]
        for name in outputs:
            nbytes = batch * self._dtypes[name].itemsize
            self._cuda.copy_to_host_async(self._host[name].ptr, self._device[name].ptr, nbytes, self._stream)
        self._cuda.stream_synchronize(self._stream)
        return {n: self._host[n].view(self._dtypes[n], batch).astype(np.float32) for n in outputs}

    def _bind(self, ctx: Any, arrays: dict[str, np.ndarray], batch: int) -> None:
        for name, arr in arrays.items():
            if not ctx.set_input_shape(name, arr.shape):
                raise EngineError(f"TensorRT rejected shape {arr.shape} for input {name}: "
                                  f"{'; '.join(self._logger.errors[-3:]) or 'outside the profile'}")
        for name in self._dtypes:
            ctx.set_tensor_address(name, self._device[name].ptr)
        for name in self._dtypes:
            if name not in self._inputs and tuple(ctx.get_tensor_shape(name)) != (batch,):
                raise EngineError(f"output {name} has shape {tuple(ctx.get_tensor_shape(name))}, expected ({batch},)")

    def _enqueue(self, ctx: Any) -> None:
        if not ctx.execute_async_v3(self._stream_handle):
            errors = "; ".join(self._logger.errors[-3:]) or "no message"
            raise EngineError(f"TensorRT execute_async_v3 failed: {errors}")

    def _capture(self, index: int, arrays: dict[str, np.ndarray], batch: int) -> _Graph:
        """Own context with memory sized for these shapes; an uncaptured warm-up run, then capture (gpu-apis 2.4)."""
        ctx = self._new_context(index, self._trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        self._bind(ctx, arrays, batch)
        size = int(ctx.update_device_memory_size_for_shapes())
        scratch = self._cuda.malloc(max(size, 256))
        ctx.set_device_memory(scratch, size)
        graph = _Graph(ctx, scratch, None)
        try:
            self._enqueue(ctx)
            self._cuda.stream_synchronize(self._stream)
            self._cuda.begin_capture(self._stream)
            captured = ctx.execute_async_v3(self._stream_handle)
            cuda_graph = self._cuda.end_capture(self._stream)
            if not captured:
                self._cuda.graph_destroy(cuda_graph)
                raise EngineError("execute_async_v3 returned False while capturing")
            graph.graph_exec = self._cuda.instantiate(cuda_graph)
            self._cuda.graph_destroy(cuda_graph)
        except EngineError as exc:
            self._cuda.clear_error()
            self._drop_graph(graph)
            raise EngineError(f"use_cuda_graphs=True but this engine cannot be captured into a CUDA graph ({exc}); "
                              "create the backend with use_cuda_graphs=False") from exc
        return graph

    def _drop_graph(self, graph: _Graph) -> None:
        if graph.graph_exec is not None:
            self._cuda.graph_exec_destroy(graph.graph_exec)
        graph.context = None
        self._cuda.free(graph.scratch)
