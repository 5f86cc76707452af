"""A thin wrapper over cuda-python's runtime API (`cuda.bindings.runtime`): what the TensorRT backend needs.

Error checking (every failing call raises EngineError with the CUDA error name), device facts, device and pinned
host memory, async copies, streams and CUDA graph capture. No torch, ever.

NOT RUN IN CI: this machine has no GPU and cuda-python is not installed here. Every name follows
/work/shared/reference/gpu-apis.md section 2 (cuda-bindings >= 12.6, where `cuda.bindings` exists; 13.x needs a
CUDA 13 driver). The error translation is tested on CPU with a fake module; the rest needs a GPU check
(tests/test_tensorrt.py, marked trt, and benchmarks/gpu_check.py).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ._deps import require
from .errors import EngineError


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

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount"))

    def device_info(self, index: int) -> DeviceInfo:
        count = self.device_count()
        if not 0 <= index < count:
            raise EngineError(f"CUDA device {index} requested but {count} device(s) are visible; pick 0..{count - 1}")
        props = self._call("cudaGetDeviceProperties", index)
        return DeviceInfo(index, _text(props.name), int(props.major), int(props.minor))

    def driver_version(self) -> int:
        return int(self._call("cudaDriverGetVersion"))

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
        return self._call("cudaStreamCreate")

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

    # CUDA graphs (gpu-apis.md 2.4) ---------------------------------------------------------------------------
    def begin_capture(self, stream: Any) -> None:
        mode = self._rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal  # trtexec's choice
        self._call("cudaStreamBeginCapture", stream, mode)

    def end_capture(self, stream: Any) -> Any:
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
