"""Where the CUDA-side tests run: on fake CUDA (tests/fake_cuda.py, on every machine) or on a real GPU.

The `cuda_env` fixture runs a test twice: "fake-cuda" always, "cuda" (marked gpu) where cuda-bindings, CuPy and a
visible GPU are all present, and otherwise skipped with the reason. The same test code therefore checks the Python
plumbing on CPU and the real CUDA behaviour on a GPU. Kernels: numpy work enqueued on fake streams, or CuPy RawKernels
launched on the real stream (no allocation inside them, so they can be captured into CUDA graphs).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from fake_cuda import FakeCudaRuntime, view
from fake_tensorrt import Job, numpy_kernel
from rerank_runtime.cudart import CudaRuntime, visible_cuda_devices
from rerank_runtime.errors import ProviderUnavailableError


def why_no_gpu(needs: dict[str, str]) -> str | None:
    """None when every needed package (name -> import name) and a visible GPU are here; otherwise what is missing."""
    missing = [name for name, module in needs.items() if importlib.util.find_spec(module) is None]
    if missing:
        return f"needs {' and '.join(missing)} and an NVIDIA GPU; not installed: {missing}"
    try:
        return None if visible_cuda_devices() > 0 else "no CUDA device is visible"
    except ProviderUnavailableError as exc:
        return str(exc)


NO_REAL_CUDA = why_no_gpu({"cuda-bindings": "cuda", "CuPy": "cupy"})

_ADD_ONE = r"""
extern "C" __global__ void add_one(int* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1;
}
"""
_ROWS = r"""
extern "C" __global__ void rows(const long long* a, const long long* b, double* scratch, float* out0, float* out1,
                                int batch, int width, int outputs, int profile) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= batch) return;
    double s = 0.0;
    for (int i = 0; i < width; ++i) s += (double)a[r * width + i] + (double)b[r * width + i];
    scratch[r] = s;
    out0[r] = (float)(1.0 * scratch[r] + 1000.0 * profile);
    if (outputs > 1) out1[r] = (float)(2.0 * scratch[r] + 1000.0 * profile);
}
"""


@dataclass
class CudaEnv:
    name: str
    fake: FakeCudaRuntime | None
    freed: list[int] = field(default_factory=list)  # device addresses the code under test freed

    @property
    def real(self) -> bool:
        return self.fake is None

    def runtime(self) -> CudaRuntime:
        return CudaRuntime()

    def alloc(self, nbytes: int) -> int:
        """Memory TensorRT would own (a fake engine's context memory)."""
        return self.runtime().malloc(nbytes)

    def stream_flags(self, stream: Any) -> int:
        if self.fake is not None:
            return int(stream.flags)
        from cuda.bindings import runtime

        err, flags = runtime.cudaStreamGetFlags(stream)
        assert err == runtime.cudaError_t.cudaSuccess, err
        return int(flags)

    def non_blocking(self) -> int:
        return int(self.runtime()._rt.cudaStreamNonBlocking)

    def capturing(self, stream_handle: int) -> bool:
        if self.fake is not None:
            return self.fake.streams[stream_handle].capture is not None
        from cuda.bindings import runtime

        err, status = runtime.cudaStreamIsCapturing(runtime.cudaStream_t(stream_handle))
        return status != runtime.cudaStreamCaptureStatus.cudaStreamCaptureStatusNone

    def add_one(self, ptr: int, count: int, stream_handle: int) -> None:
        """Enqueue x[i] += 1 for `count` int32 values at `ptr`."""
        if self.fake is not None:
            self.fake.enqueue(stream_handle, lambda: view(ptr, np.int32, count).__iadd__(1))
            return
        cupy = _cupy()
        with cupy.cuda.ExternalStream(stream_handle):
            _kernel(_ADD_ONE, "add_one")(((count + 127) // 128,), (128,), (np.uint64(ptr), np.int32(count)))

    def trt_kernel(self) -> Callable[[Job, int], None]:
        """The fake engine's maths (fake_tensorrt.expected_scores) as this environment runs it."""
        if self.fake is not None:
            return numpy_kernel(self.fake)

        def launch(job: Job, stream_handle: int) -> None:
            assert len(job.inputs) == 2 and len(job.outputs) <= 2, "the CuPy kernel takes 2 int64 inputs, 2 outputs"
            (a, _, shape), (b, _, _) = job.inputs
            out1 = job.outputs[1] if len(job.outputs) > 1 else job.outputs[0]
            args = (np.uint64(a), np.uint64(b), np.uint64(job.scratch), np.uint64(job.outputs[0]), np.uint64(out1),
                    np.int32(job.batch), np.int32(int(np.prod(shape)) // job.batch), np.int32(len(job.outputs)),
                    np.int32(job.profile))
            with _cupy().cuda.ExternalStream(stream_handle):
                _kernel(_ROWS, "rows")(((job.batch + 127) // 128,), (128,), args)

        return launch


def _cupy() -> Any:
    import cupy

    return cupy


_KERNELS: dict[str, Any] = {}


def _kernel(source: str, name: str) -> Any:
    if name not in _KERNELS:
        _KERNELS[name] = _cupy().RawKernel(source, name)
    return _KERNELS[name]


@pytest.fixture(params=[pytest.param("fake", id="fake-cuda"),
                        pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
                            NO_REAL_CUDA is not None, reason=NO_REAL_CUDA or "")])])
def cuda_env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> CudaEnv:
    if request.param == "fake":
        fake = FakeCudaRuntime().install(monkeypatch)
        return CudaEnv("fake-cuda", fake, fake.freed)  # the fake records every free itself
    env = CudaEnv("cuda", None)
    free = CudaRuntime.free

    def recording_free(self: CudaRuntime, ptr: int) -> None:
        env.freed.append(ptr)
        free(self, ptr)

    monkeypatch.setattr(CudaRuntime, "free", recording_free)
    return env
