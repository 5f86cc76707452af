"""The CUDA layer without torch: the device count (driver API through ctypes) and a thin wrapper over cuda-python's
runtime API (`cuda.bindings.runtime`), which the TensorRT backend needs.

`visible_cuda_devices` is the one device count of the package: it needs only the NVIDIA driver, so the ONNX Runtime
providers can use it without cuda-bindings. `CudaRuntime` adds error checking (every failing call raises EngineError
with the CUDA error name), device facts, device and pinned host memory, async copies, non-blocking streams, events
and CUDA graph capture.

Names follow cuda-bindings >= 12.6 (where `cuda.bindings` exists; 13.x needs a CUDA 13 driver, r580+). On CPU the
plumbing is tested against a fake runtime module (tests/fake_cuda.py); the gpu-marked tests in tests/test_gpu_cudart.py
run it against the real cuda.bindings.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ._deps import require
from .errors import EngineError, ProviderUnavailableError

_CUDA_ERROR_NO_DEVICE = 100  # CUresult when the driver sees no device (e.g. CUDA_VISIBLE_DEVICES="")


def visible_cuda_devices() -> int:
    """Number of CUDA devices the driver shows this process (honours CUDA_VISIBLE_DEVICES), without torch.

    The driver API through ctypes (cuInit, cuDeviceGetCount): it needs the NVIDIA driver only, not cuda-bindings.
    """
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        raise ProviderUnavailableError(
            f"no NVIDIA driver found (libcuda.so.1 could not be loaded: {exc}); install the NVIDIA driver, "
            "or run on the CPU with provider='cpu', devices='cpu'"
        ) from exc
    rc = lib.cuInit(0)
    if rc == _CUDA_ERROR_NO_DEVICE:
        return 0
    if rc != 0:
        raise ProviderUnavailableError(f"the NVIDIA driver failed to initialise (cuInit returned CUresult {rc}); "
                                       "check `nvidia-smi`")
    count = ctypes.c_int(0)
    rc = lib.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0:
        raise ProviderUnavailableError(f"cuDeviceGetCount failed with CUresult {rc}; check `nvidia-smi`")
    return count.value


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    major: int
    minor: int

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")
    return str(value)


class CudaRuntime:
    """`cuda.bindings.runtime` with error checking. `module` is for tests; by default the real one is imported."""

    def __init__(self, module: ModuleType | None = None) -> None:
        self._rt = module if module is not None else require("cuda.bindings.runtime")

    def _call(self, name: str, *args: Any) -> Any:
        rt = self._rt
        try:
            err, *out = getattr(rt, name)(*args)
        except RuntimeError as exc:  # e.g. "Failed to dlopen libcuda.so.1": no NVIDIA driver on this machine
            raise EngineError(
                f"CUDA call {name} could not run ({exc}); the native TensorRT backend needs an NVIDIA GPU and "
                "driver: use provider='cpu' (or 'cuda' with onnxruntime-gpu) on this machine"
            ) from exc
        if err != rt.cudaError_t.cudaSuccess:
            raise EngineError(f"CUDA call {name} failed with {self.error_name(err)}: {self.error_string(err)}")
        if not out:
            return None
        return out[0] if len(out) == 1 else tuple(out)

    def error_name(self, err: Any) -> str:
        return _text(self._rt.cudaGetErrorName(err)[1])

    def error_string(self, err: Any) -> str:
        return _text(self._rt.cudaGetErrorString(err)[1])

    # devices -------------------------------------------------------------------------------------------------
    def set_device(self, index: int) -> None:
        self._call("cudaSetDevice", index)

    def device_info(self, index: int) -> DeviceInfo:
        count = visible_cuda_devices()
        if not 0 <= index < count:
            raise EngineError(f"CUDA device {index} requested but {count} device(s) are visible; pick 0..{count - 1}")
        props = self._call("cudaGetDeviceProperties", index)
        return DeviceInfo(index, _text(props.name), int(props.major), int(props.minor))

    def driver_version(self) -> int:
        """The CUDA version the driver supports, as 1000 * major + 10 * minor (13000 is CUDA 13.0)."""
        return int(self._call("cudaDriverGetVersion"))

    def runtime_version(self) -> int:
        """The CUDA runtime cuda-bindings was built with, same encoding as driver_version."""
        return int(self._call("cudaRuntimeGetVersion"))

    # memory ----------------------------------------------------------------------------------------------------
    def malloc(self, nbytes: int) -> int:
        return int(self._call("cudaMalloc", nbytes))

    def free(self, ptr: int) -> None:
        self._call("cudaFree", ptr)

    def malloc_host(self, nbytes: int) -> int:
        return int(self._call("cudaMallocHost", nbytes))

    def free_host(self, ptr: int) -> None:
        self._call("cudaFreeHost", ptr)

    def copy_to_device_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call("cudaMemcpyAsync", dst, src, nbytes, kind, stream)

    def copy_to_host_async(self, dst: int, src: int, nbytes: int, stream: Any) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call("cudaMemcpyAsync", dst, src, nbytes, kind, stream)

    # streams ---------------------------------------------------------------------------------------------------
    def stream_create(self) -> Any:
        """A non-blocking stream: no implicit synchronisation with the legacy default stream, so work that another
        library puts on stream 0 in this process can neither stall it nor invalidate a graph capture on it."""
        return self._call("cudaStreamCreateWithFlags", self._rt.cudaStreamNonBlocking)

    def stream_destroy(self, stream: Any) -> None:
        self._call("cudaStreamDestroy", stream)

    def stream_synchronize(self, stream: Any) -> None:
        self._call("cudaStreamSynchronize", stream)

    @staticmethod
    def handle(obj: Any) -> int:
        """The raw address of a stream (what TensorRT's execute_async_v3 takes). int(obj) is deprecated in 13.x."""
        try:
            from cuda.bindings.utils import get_cuda_native_handle  # type: ignore[import-not-found]
        except ImportError:  # cuda-bindings 12.x has no utils.get_cuda_native_handle; int() is its API there
            return int(obj)
        return int(get_cuda_native_handle(obj))

    # events (timing) -----------------------------------------------------------------------------------------
    def event_create(self) -> Any:
        return self._call("cudaEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        """stream: a stream object, or the address of one (torch's, ONNX Runtime's user_compute_stream)."""
        if isinstance(stream, int):
            stream = self._rt.cudaStream_t(stream)
        self._call("cudaEventRecord", event, stream)

    def elapsed_ms(self, start: Any, end: Any) -> float:
        """Milliseconds between two recorded events; waits for `end` first."""
        self._call("cudaEventSynchronize", end)
        return float(self._call("cudaEventElapsedTime", start, end))

    def event_destroy(self, event: Any) -> None:
        self._call("cudaEventDestroy", event)

    # CUDA graphs -----------------------------------------------------------------------------------------------
    def begin_capture(self, stream: Any) -> None:
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal  # trtexec's choice
        self._call("cudaStreamBeginCapture", stream, mode)

    def end_capture(self, stream: Any) -> Any:
        """End a capture and return the graph. An invalidated capture raises EngineError, but the stream has left
        capture mode either way, so it stays usable after clear_error()."""
        return self._call("cudaStreamEndCapture", stream)

    def instantiate(self, graph: Any) -> Any:
        return self._call("cudaGraphInstantiate", graph, 0)  # CUDA 12+ signature (graph, flags)

    def launch(self, graph_exec: Any, stream: Any) -> None:
        self._call("cudaGraphLaunch", graph_exec, stream)

    def graph_destroy(self, graph: Any) -> None:
        self._call("cudaGraphDestroy", graph)

    def graph_exec_destroy(self, graph_exec: Any) -> None:
        self._call("cudaGraphExecDestroy", graph_exec)

    def clear_error(self) -> None:
        """Reset the sticky error a failed capture leaves behind (cudaGetLastError returns and clears it)."""
        self._rt.cudaGetLastError()


class DeviceBuffer:
    """Device memory that grows on demand (power-of-two sizes). `ensure` says whether the address changed."""

    def __init__(self, cuda: CudaRuntime) -> None:
        self._cuda = cuda
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> bool:
        if nbytes <= self.nbytes:
            return False
        size = 1 << max(8, (nbytes - 1).bit_length())
        new = self._cuda.malloc(size)
        self.release()
        self.ptr, self.nbytes = new, size
        return True

    def release(self) -> None:
        if self.ptr:
            self._cuda.free(self.ptr)
        self.ptr, self.nbytes = 0, 0


class PinnedBuffer:
    """Page-locked host memory that grows on demand, viewed as numpy for the async copies."""

    def __init__(self, cuda: CudaRuntime) -> None:
        self._cuda = cuda
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> None:
        if nbytes <= self.nbytes:
            return
        size = 1 << max(8, (nbytes - 1).bit_length())
        new = self._cuda.malloc_host(size)
        self.release()
        self.ptr, self.nbytes = new, size

    def view(self, dtype: np.dtype[Any], count: int) -> np.ndarray:
        raw = memoryview((ctypes.c_char * self.nbytes).from_address(self.ptr)).cast("B")
        array: np.ndarray = np.frombuffer(raw, dtype=np.uint8).view(dtype)
        return array[:count]

    def release(self) -> None:
        if self.ptr:
            self._cuda.free_host(self.ptr)
        self.ptr, self.nbytes = 0, 0
