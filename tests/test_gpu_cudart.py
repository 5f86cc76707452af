"""rerank_runtime.cudart: every test runs on fake CUDA here and, marked gpu, against the real cuda.bindings on a GPU
(device facts, memory, pinned round trips on a stream, allocation failure, graph capture and replay of a CuPy kernel,
a failed capture that leaves the stream usable, events)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fake_cuda import FakeCudaRuntime
from gpu_env import CudaEnv, cuda_env  # noqa: F401 (the fixture)
from rerank_runtime import cudart
from rerank_runtime.cudart import CudaRuntime, DeviceBuffer, PinnedBuffer
from rerank_runtime.errors import EngineError


def test_device_facts(cuda_env: CudaEnv) -> None:
    cuda = cuda_env.runtime()
    info = cuda.device_info(0)
    assert info.name and "\0" not in info.name and info.major >= 5, info
    assert info.compute_capability == f"{info.major}.{info.minor}"
    assert cuda.driver_version() >= 12000 and cuda.runtime_version() >= 12000
    count = cudart.visible_cuda_devices()
    with pytest.raises(EngineError, match=f"CUDA device {count} requested but {count} device"):
        cuda.device_info(count)


def test_memory_and_allocation_failure(cuda_env: CudaEnv) -> None:
    cuda = cuda_env.runtime()
    ptr = cuda.malloc(1 << 20)
    assert ptr % 256 == 0 or not cuda_env.real  # cudaMalloc aligns to 256 bytes at least
    cuda.free(ptr)
    with pytest.raises(EngineError, match=r"cudaMalloc failed with cudaErrorMemoryAllocation"):
        cuda.malloc(1 << 60)
    cuda.clear_error()
    cuda.free(cuda.malloc(256))  # still usable


def test_pinned_round_trip_on_a_non_blocking_stream(cuda_env: CudaEnv) -> None:
    cuda = cuda_env.runtime()
    stream = cuda.stream_create()
    assert cuda_env.stream_flags(stream) == cuda_env.non_blocking()
    host_in, host_out, device = PinnedBuffer(cuda), PinnedBuffer(cuda), DeviceBuffer(cuda)
    data = np.arange(1000, dtype=np.int64) * 7 - 3
    for buf in (host_in, host_out, device):
        buf.ensure(data.nbytes)
    host_in.view(data.dtype, data.size)[:] = data
    cuda.copy_to_device_async(device.ptr, host_in.ptr, data.nbytes, stream)
    cuda.copy_to_host_async(host_out.ptr, device.ptr, data.nbytes, stream)
    cuda.stream_synchronize(stream)
    np.testing.assert_array_equal(host_out.view(data.dtype, data.size), data)
    for buf in (host_in, host_out, device):
        buf.release()
    cuda.stream_destroy(stream)


def _upload(cuda: CudaRuntime, stream: object, device: DeviceBuffer, host: PinnedBuffer, values: np.ndarray) -> None:
    host.view(values.dtype, values.size)[:] = values
    cuda.copy_to_device_async(device.ptr, host.ptr, values.nbytes, stream)


def _download(cuda: CudaRuntime, stream: object, device: DeviceBuffer, host: PinnedBuffer, count: int) -> np.ndarray:
    cuda.copy_to_host_async(host.ptr, device.ptr, count * 4, stream)
    cuda.stream_synchronize(stream)
    return host.view(np.dtype(np.int32), count).copy()


def _ones_on_a_stream(cuda_env: CudaEnv, n: int) -> tuple[CudaRuntime, Any, int, DeviceBuffer, PinnedBuffer]:
    """A stream and n int32 ones on the device, made by one uncaptured add_one (CuPy compiles it here)."""
    cuda = cuda_env.runtime()
    stream = cuda.stream_create()
    handle = CudaRuntime.handle(stream)
    device, host = DeviceBuffer(cuda), PinnedBuffer(cuda)
    device.ensure(n * 4)
    host.ensure(n * 4)
    _upload(cuda, stream, device, host, np.zeros(n, np.int32))
    cuda_env.add_one(device.ptr, n, handle)
    cuda.stream_synchronize(stream)
    return cuda, stream, handle, device, host


def test_graph_capture_and_replay_read_new_data(cuda_env: CudaEnv) -> None:
    n = 300
    cuda, stream, handle, device, host = _ones_on_a_stream(cuda_env, n)
    cuda.begin_capture(stream)
    cuda_env.add_one(device.ptr, n, handle)
    graph = cuda.end_capture(stream)
    graph_exec = cuda.instantiate(graph)
    cuda.graph_destroy(graph)
    assert _download(cuda, stream, device, host, n).tolist() == [1] * n  # capturing ran nothing
    for _ in range(3):
        cuda.launch(graph_exec, stream)
    assert _download(cuda, stream, device, host, n).tolist() == [4] * n
    _upload(cuda, stream, device, host, np.arange(n, dtype=np.int32))  # new data at the captured address
    cuda.launch(graph_exec, stream)
    assert _download(cuda, stream, device, host, n).tolist() == list(range(1, n + 1))
    cuda.graph_exec_destroy(graph_exec)
    cuda.stream_destroy(stream)


def test_failed_capture_leaves_the_stream_usable(cuda_env: CudaEnv) -> None:
    n = 64
    cuda, stream, handle, device, host = _ones_on_a_stream(cuda_env, n)
    cuda.begin_capture(stream)
    cuda_env.add_one(device.ptr, n, handle)
    with pytest.raises(EngineError, match="cudaStreamSynchronize failed with cudaErrorStreamCapture"):
        cuda.stream_synchronize(stream)  # not allowed while capturing: invalidates the capture
    with pytest.raises(EngineError, match="cudaStreamEndCapture failed with cudaErrorStreamCaptureInvalidated"):
        cuda.end_capture(stream)
    cuda.clear_error()
    assert not cuda_env.capturing(handle)
    cuda_env.add_one(device.ptr, n, handle)
    assert _download(cuda, stream, device, host, n).tolist() == [2] * n  # the invalidated capture ran nothing
    cuda.stream_destroy(stream)


def test_events_time_work_on_the_stream(cuda_env: CudaEnv) -> None:
    cuda, n = cuda_env.runtime(), 1 << 16
    stream = cuda.stream_create()
    device = DeviceBuffer(cuda)
    device.ensure(n * 4)
    start, end = cuda.event_create(), cuda.event_create()
    cuda.event_record(start, stream)
    cuda_env.add_one(device.ptr, n, CudaRuntime.handle(stream))
    cuda.event_record(end, CudaRuntime.handle(stream))  # a stream's address works too (torch's, ONNX Runtime's)
    assert cuda.elapsed_ms(start, end) > 0.0  # the kernel ran between the two events
    for event in (start, end):
        cuda.event_destroy(event)
    cuda.stream_destroy(stream)


def test_a_missing_driver_is_an_engine_error_that_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCudaRuntime().install(monkeypatch)

    def no_driver(nbytes: int) -> None:
        raise RuntimeError("Failed to dlopen libcuda.so.1")

    monkeypatch.setattr(fake, "cudaMalloc", no_driver)
    with pytest.raises(EngineError, match=r"libcuda\.so\.1.*needs an NVIDIA GPU and driver"):
        CudaRuntime().malloc(1024)


def test_device_buffer_grows_in_powers_of_two(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCudaRuntime().install(monkeypatch)
    buf = DeviceBuffer(CudaRuntime())
    assert buf.ensure(1000) and buf.nbytes == 1024
    first = buf.ptr
    assert not buf.ensure(1024) and buf.ptr == first
    assert buf.ensure(1025) and buf.nbytes == 2048 and buf.ptr != first
    assert fake.freed == [first]  # the old block goes back
