"""Runs an export directory's native TensorRT engine (`model.engine`, built by `rerank-export engine <dir>`).

`TensorRTBackend` implements spec.Backend on one GPU (requests are checked and their feeds completed by the front,
front.GraphFront). The pure parts (the manifest's engine record, profile selection: trt_engine.py) run and are tested
on CPU, and so does the whole run/capture/replay plumbing here, against fake
`tensorrt` and `cuda.bindings.runtime` modules (tests/fake_cuda.py). Against real CUDA it is checked by the gpu-marked
tests (tests/test_gpu_trt_fake.py: real cuda-bindings, a fake TensorRT whose enqueue launches a CuPy kernel); against
real TensorRT by the trt-marked tests and benchmarks/gpu_check.py. None of those has run on a GPU yet.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._deps import require
from .cudart import CudaRuntime, DeviceBuffer, PinnedBuffer
from .errors import EngineError, ManifestMismatchError
from .manifest import Manifest
from .trt_engine import (ENGINE_FILE, MIN_TENSORRT, EngineRecord, Profile, Shape, check_engine_compatibility,
                         check_tensorrt_version, engine_record, logged, rebuild_command, select_profile, trt_logger)

__all__ = ["ENGINE_FILE", "MIN_TENSORRT", "EngineRecord", "Profile", "Shape", "TensorRTBackend",
           "check_engine_compatibility", "check_tensorrt_version", "engine_record", "rebuild_command",
           "select_profile", "trt_logger"]


@dataclass
class _Context:
    context: Any
    runtime_config: Any  # TensorRT >= 10.11: the IRuntimeConfig the context was created with, which must outlive it


@dataclass
class _Graph:
    context: _Context | None
    scratch: int  # the context's own device memory (USER_MANAGED), sized for the captured shapes; 0 until allocated
    graph_exec: Any


class TensorRTBackend:
    """spec.Backend over model.engine on one GPU. run() is thread-safe.

    use_cuda_graphs: batches of at most `cuda_graph_max_batch` rows are captured once per (profile, input shapes),
    each in its own execution context (a graph fixes the context's state), and replayed after that; the least recently
    used graph is dropped beyond `max_cuda_graphs`.

    Invariant: everything that touches the engine (binding, enqueue, capture, replay, the copies) runs under one lock
    on one non-blocking stream. Several contexts therefore select the same optimisation profile (a profile's plain
    context and every graph context captured for it), which TensorRT allows only because no two of them ever run at
    once. A second stream, or a run() outside the lock, would break it.
    """

    concurrency = 1

    def __init__(self, export_dir: Path, manifest: Manifest, device_id: int = 0, *,
                 use_cuda_graphs: bool = False, cuda_graph_max_batch: int = 4, max_cuda_graphs: int = 16) -> None:
        """The engine file is not checked here: load_artifact checks it against its record (size and sha256) once
        for every device (integrity.check_engine)."""
        self.export_dir, self.manifest, self.device_id = Path(export_dir), manifest, device_id
        self.use_cuda_graphs, self.cuda_graph_max_batch = use_cuda_graphs, cuda_graph_max_batch
        self.max_cuda_graphs = max_cuda_graphs
        record = engine_record(manifest, self.export_dir)
        self.profiles = list(record.profiles)
        path = self.export_dir / record.engine_file
        self._trt, self._cuda = require("tensorrt"), CudaRuntime()
        check_tensorrt_version(self._trt)
        device = self._cuda.device_info(device_id)
        check_engine_compatibility(record, tensorrt_version=self._trt.__version__, gpu_name=device.name,
                                   compute_capability=device.compute_capability, export_dir=self.export_dir)
        self._cuda.set_device(device_id)
        self._logger = trt_logger(self._trt)
        self._runtime = self._trt.Runtime(self._logger)
        with self._logger.capture() as errors:
            self._engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self._engine is None:  # TensorRT returns None; the reason went to the logger
            raise EngineError(f"TensorRT could not deserialize {path}: {logged(errors, 'no message')}. Rebuild it on "
                              f"this machine: {rebuild_command(self.export_dir)}")
        self._dtypes, self._inputs = self._describe_io()
        self._check_engine_profiles()
        self._stream = self._cuda.stream_create()
        self._stream_handle = CudaRuntime.handle(self._stream)
        self._device = {name: DeviceBuffer(self._cuda) for name in self._dtypes}
        self._host = {name: PinnedBuffer(self._cuda) for name in self._dtypes}
        self._contexts: dict[int, _Context] = {}
        self._graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()
        self._lock = threading.Lock()
        if use_cuda_graphs:  # graphs capture buffer addresses: size them once so that they never move
            self._reserve({n: max(int(np.prod(p.shapes[n][2])) for p in self.profiles) for n in self._inputs},
                          max(p.max_batch_size for p in self.profiles))

    # Backend protocol ----------------------------------------------------------------------------------------
    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """feeds: the graph's inputs, completed by the front; staged in the engine's binding types (which the
        manifest's input types are, so this copies nothing in practice)."""
        arrays = {n: np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self._inputs}
        batch, length = arrays["input_ids"].shape
        profile = select_profile(self.profiles, batch, length, self.export_dir, self.manifest)
        with self._lock:
            if self._stream is None:
                raise EngineError(f"this TensorRTBackend for {self.export_dir} was closed; create a new one")
            self._cuda.set_device(self.device_id)  # the current device is per thread
            outputs = self._execute(profile, arrays, batch)
        return [outputs[name] for name in names]

    @property
    def stream_handle(self) -> int:
        """The address of the stream every enqueue runs on (for CUDA-event timing around run())."""
        return self._stream_handle

    def captured_shapes(self) -> list[tuple[Any, ...]]:
        """(profile index, input shapes...) of the CUDA graphs held now, least recently used first."""
        with self._lock:
            return list(self._graphs)

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
        graph = self.manifest.graph
        want_in, want_out = {t.name for t in graph.inputs}, {t.name for t in graph.outputs}
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
    def _new_context(self, index: int, strategy: Any) -> _Context:
        engine, config = self._engine, None
        with self._logger.capture() as errors:
            if hasattr(engine, "create_runtime_config"):  # TensorRT >= 10.11: strategy through IRuntimeConfig
                config = engine.create_runtime_config()
                config.set_execution_context_allocation_strategy(strategy)
                ctx = engine.create_execution_context(runtime_config=config)
            else:
                ctx = engine.create_execution_context(strategy=strategy)
        if ctx is None:
            raise EngineError(f"TensorRT could not create an execution context on GPU {self.device_id} "
                              f"({logged(errors, 'no message; out of device memory?')})")
        context = _Context(ctx, config)  # the config lives as long as the context
        with self._logger.capture() as errors:
            try:  # new contexts start on profile 0
                selected = ctx.set_optimization_profile_async(index, self._stream_handle)
            except RuntimeError as exc:  # TensorRT's Python binding raises instead of returning False
                raise EngineError(f"TensorRT refused optimisation profile {index} of {self.export_dir} ({exc}; "
                                  f"{logged(errors, 'no message')})") from exc
        if selected is False:
            raise EngineError(f"TensorRT refused optimisation profile {index} of {self.export_dir}: "
                              f"{logged(errors, 'no message')}")
        self._cuda.stream_synchronize(self._stream)
        return context

    def _context(self, index: int) -> _Context:
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
            ctx = self._context(profile.index).context
            self._bind(ctx, arrays, batch)
            self._enqueue(ctx)
        outputs = [n for n in self._dtypes if n not in self._inputs]
        for name in outputs:
            nbytes = batch * self._dtypes[name].itemsize
            self._cuda.copy_to_host_async(self._host[name].ptr, self._device[name].ptr, nbytes, self._stream)
        self._cuda.stream_synchronize(self._stream)
        return {n: self._host[n].view(self._dtypes[n], batch).astype(np.float32) for n in outputs}

    def _bind(self, ctx: Any, arrays: dict[str, np.ndarray], batch: int) -> None:
        with self._logger.capture() as errors:
            for name, arr in arrays.items():
                if not ctx.set_input_shape(name, arr.shape):
                    raise EngineError(f"TensorRT rejected shape {arr.shape} for input {name}: "
                                      f"{logged(errors, 'outside the profile')}")
            for name in self._dtypes:
                if not ctx.set_tensor_address(name, self._device[name].ptr):
                    raise EngineError(f"TensorRT rejected the device address of {name} "
                                      f"({self._device[name].ptr:#x}): {logged(errors, 'no message')}")
        for name in self._dtypes:
            if name not in self._inputs and tuple(ctx.get_tensor_shape(name)) != (batch,):
                raise EngineError(f"output {name} has shape {tuple(ctx.get_tensor_shape(name))}, expected ({batch},)")

    def _enqueue(self, ctx: Any) -> None:
        with self._logger.capture() as errors:
            if not ctx.execute_async_v3(self._stream_handle):
                raise EngineError(f"TensorRT execute_async_v3 failed: {logged(errors, 'no message')}")

    def _capture(self, index: int, arrays: dict[str, np.ndarray], batch: int) -> _Graph:
        """A context of its own with memory sized for these shapes, an uncaptured warm-up run (it flushes TensorRT's
        deferred set-up and computes this batch's outputs), then the capture."""
        graph = _Graph(self._new_context(index, self._trt.ExecutionContextAllocationStrategy.USER_MANAGED), 0, None)
        ctx = graph.context.context  # type: ignore[union-attr]
        try:
            self._bind(ctx, arrays, batch)
            size = int(ctx.update_device_memory_size_for_shapes())
            graph.scratch = self._cuda.malloc(max(size, 256))
            ctx.set_device_memory(graph.scratch, size)
            self._enqueue(ctx)
            self._cuda.stream_synchronize(self._stream)
            graph.graph_exec = self._record(ctx)
        except EngineError as exc:
            self._cuda.clear_error()
            self._drop_graph(graph)
            raise EngineError(f"use_cuda_graphs=True but this engine cannot be captured into a CUDA graph ({exc}); "
                              "create the backend with use_cuda_graphs=False") from exc
        return graph

    def _record(self, ctx: Any) -> Any:
        """Capture one enqueue on the stream and instantiate it. The capture always ends, so that a failure leaves
        the stream out of capture mode and usable."""
        self._cuda.begin_capture(self._stream)
        with self._logger.capture() as errors:
            try:
                captured = ctx.execute_async_v3(self._stream_handle)
            finally:
                cuda_graph = self._cuda.end_capture(self._stream)
        try:
            if not captured:
                raise EngineError(f"execute_async_v3 returned False while capturing: {logged(errors, 'no message')}")
            return self._cuda.instantiate(cuda_graph)
        finally:
            self._cuda.graph_destroy(cuda_graph)

    def _drop_graph(self, graph: _Graph) -> None:
        if graph.graph_exec is not None:
            self._cuda.graph_exec_destroy(graph.graph_exec)
        graph.context = None  # the context goes before the memory it was given
        if graph.scratch:
            self._cuda.free(graph.scratch)
