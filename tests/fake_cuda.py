"""A fake `cuda.bindings.runtime` for CPU tests: "device" memory is host memory, streams are queues.

Work enqueued on a stream (async copies, kernels, graph launches) runs only when the stream is synchronised, in order,
as on a GPU: code that reads results before synchronising sees stale data here too. A stream in capture mode records
the work into a graph instead; a graph replays the recorded work, which reads the memory as it is at replay time.
Every call returns (error, *results) like cuda-bindings. The `cuda.bindings` package has no `utils` here, so
CudaRuntime.handle() falls back to int(stream).
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 (cuda-bindings' name)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevice = 101
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1


class Stream:
    def __init__(self, handle: int, flags: int) -> None:
        self.handle, self.flags = handle, flags
        self.queue: list[Callable[[], object]] = []
        self.capture: list[Callable[[], object]] | None = None
        self.invalidated = False

    def __int__(self) -> int:
        return self.handle


class Graph:
    def __init__(self, ops: list[Callable[[], object]]) -> None:
        self.ops = ops


def view(ptr: int, dtype: Any, count: int) -> np.ndarray:
    """`count` elements of `dtype` at address `ptr` (fake device memory or pinned host memory)."""
    nbytes = int(count) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_char * nbytes).from_address(ptr), dtype=dtype, count=int(count))


class FakeCudaRuntime(types.ModuleType):
    """Install with install(monkeypatch); knobs: `limit` (largest allocation), `devices` (name, major, minor)."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamNonBlocking = 1

    def __init__(self, devices: tuple[tuple[str, int, int], ...] = (("Fake GPU", 9, 0),), limit: int = 1 << 30):
        super().__init__("cuda.bindings.runtime")
        self.devices, self.limit = devices, limit
        self.memory: dict[int, Any] = {}  # device and pinned allocations: address -> ctypes buffer
        self.freed: list[int] = []
        self.streams: dict[int, Stream] = {}
        self.current_device = 0
        self.sticky = cudaError_t.cudaSuccess
        self._handles = itertools.count(0x1000, 0x10)

    # errors and devices ---------------------------------------------------------------------------------------
    def cudaGetErrorName(self, err: cudaError_t) -> tuple[Any, bytes]:
        return cudaError_t.cudaSuccess, err.name.encode()

    def cudaGetErrorString(self, err: cudaError_t) -> tuple[Any, bytes]:
        return cudaError_t.cudaSuccess, f"fake {err.name}".encode()

    def cudaGetLastError(self) -> tuple[Any]:
        err, self.sticky = self.sticky, cudaError_t.cudaSuccess
        return (err,)

    def cudaSetDevice(self, index: int) -> tuple[Any]:
        if not 0 <= index < len(self.devices):
            return (cudaError_t.cudaErrorInvalidDevice,)
        self.current_device = index
        return (cudaError_t.cudaSuccess,)

    def cudaGetDeviceProperties(self, index: int) -> tuple[Any, Any]:
        name, major, minor = self.devices[index]
        return cudaError_t.cudaSuccess, types.SimpleNamespace(name=name.encode() + b"\0junk", major=major, minor=minor)

    def cudaDriverGetVersion(self) -> tuple[Any, int]:
        return cudaError_t.cudaSuccess, 13000

    def cudaRuntimeGetVersion(self) -> tuple[Any, int]:
        return cudaError_t.cudaSuccess, 13000

    # memory ---------------------------------------------------------------------------------------------------
    def _alloc(self, nbytes: int) -> tuple[Any, int]:
        if nbytes > self.limit:
            return cudaError_t.cudaErrorMemoryAllocation, 0
        buf = ctypes.create_string_buffer(max(int(nbytes), 1))
        self.memory[ctypes.addressof(buf)] = buf
        return cudaError_t.cudaSuccess, ctypes.addressof(buf)

    def _free(self, ptr: int) -> tuple[Any]:
        if self.memory.pop(ptr, None) is None:
            return (cudaError_t.cudaErrorInvalidValue,)
        self.freed.append(ptr)
        return (cudaError_t.cudaSuccess,)

    cudaMalloc = _alloc
    cudaMallocHost = _alloc
    cudaFree = _free
    cudaFreeHost = _free

    def cudaMemcpyAsync(self, dst: int, src: int, nbytes: int, kind: cudaMemcpyKind, stream: Stream) -> tuple[Any]:
        return self.enqueue(stream, lambda: ctypes.memmove(dst, src, nbytes))

    # streams, events, graphs ----------------------------------------------------------------------------------
    def enqueue(self, stream: Any, op: Callable[[], object]) -> tuple[Any]:
        """Put work on a stream (a Stream or its handle), or into the graph it is capturing."""
        s = stream if isinstance(stream, Stream) else self.streams[int(stream)]
        (s.capture if s.capture is not None else s.queue).append(op)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamCreateWithFlags(self, flags: int) -> tuple[Any, Stream]:
        stream = Stream(next(self._handles), flags)
        self.streams[stream.handle] = stream
        return cudaError_t.cudaSuccess, stream

    def cudaStream_t(self, handle: int) -> Stream:  # noqa: N802 (cuda-bindings' name): a stream from its address
        return self.streams[int(handle)]

    def cudaStreamDestroy(self, stream: Stream) -> tuple[Any]:
        self.streams.pop(stream.handle)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: Stream) -> tuple[Any]:
        if stream.capture is not None:  # illegal while capturing: invalidates the capture, as CUDA does
            stream.invalidated = True
            self.sticky = cudaError_t.cudaErrorStreamCaptureUnsupported
            return (cudaError_t.cudaErrorStreamCaptureUnsupported,)
        while stream.queue:
            stream.queue.pop(0)()
        return (cudaError_t.cudaSuccess,)

    def cudaEventCreate(self) -> tuple[Any, list[float]]:
        return cudaError_t.cudaSuccess, []

    def cudaEventRecord(self, event: list[float], stream: Any) -> tuple[Any]:
        return self.enqueue(stream, lambda: event.append(time.perf_counter()))

    def cudaEventSynchronize(self, event: list[float]) -> tuple[Any]:
        for s in self.streams.values():
            self.cudaStreamSynchronize(s)
        return (cudaError_t.cudaSuccess,)

    def cudaEventElapsedTime(self, start: list[float], end: list[float]) -> tuple[Any, float]:
        return cudaError_t.cudaSuccess, (end[-1] - start[-1]) * 1e3

    def cudaEventDestroy(self, event: list[float]) -> tuple[Any]:
        return (cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream: Stream, mode: cudaStreamCaptureMode) -> tuple[Any]:
        if stream.capture is not None:
            return (cudaError_t.cudaErrorInvalidValue,)
        stream.capture, stream.invalidated = [], False
        return (cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream: Stream) -> tuple[Any, Graph | None]:
        ops, stream.capture = stream.capture, None
        if ops is None:
            return cudaError_t.cudaErrorInvalidValue, None
        if stream.invalidated:
            return cudaError_t.cudaErrorStreamCaptureInvalidated, None
        return cudaError_t.cudaSuccess, Graph(ops)

    def cudaGraphInstantiate(self, graph: Graph, flags: int) -> tuple[Any, Graph]:
        return cudaError_t.cudaSuccess, Graph(list(graph.ops))

    def cudaGraphLaunch(self, graph_exec: Graph, stream: Stream) -> tuple[Any]:
        for op in graph_exec.ops:
            self.enqueue(stream, op)
        return (cudaError_t.cudaSuccess,)

    def cudaGraphDestroy(self, graph: Graph) -> tuple[Any]:
        return (cudaError_t.cudaSuccess,)

    cudaGraphExecDestroy = cudaGraphDestroy

    def install(self, monkeypatch: Any) -> FakeCudaRuntime:
        """Make `import cuda.bindings.runtime` return this module, and the driver show its devices."""
        from rerank_runtime import cudart

        package, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
        package.bindings, bindings.runtime = bindings, self  # type: ignore[attr-defined]
        for name, module in (("cuda", package), ("cuda.bindings", bindings), ("cuda.bindings.runtime", self)):
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.delitem(sys.modules, "cuda.bindings.utils", raising=False)
        monkeypatch.setattr(cudart, "visible_cuda_devices", lambda: len(self.devices))
        return self
