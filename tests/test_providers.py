"""providers.resolve: devices and provider -> explicit ONNX Runtime placements, and every refusal."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from rerank_runtime import cudart, providers
from rerank_runtime.errors import ProviderUnavailableError
from rerank_runtime.manifest import Manifest
from rerank_runtime.providers import Placement, profile_shapes, resolve
from rerank_runtime.spec import ENCODER, LIGHTWEIGHT
from rerank_runtime.trt_engine import EngineRecord, Profile
from tiny_export import tiny_manifest

REPO = Path(__file__).resolve().parent.parent  # install hints name the clone the package runs from

GPU_EPS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


def manifest(compress: bool = False) -> Manifest:
    return tiny_manifest(LIGHTWEIGHT if compress else ENCODER, {"score_l2_h0" if compress else "score": (1.0, 0.0)},
                         compress_layers=(1,) if compress else (), max_length=300, max_sequence_length=320)


@pytest.fixture
def gpu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """An onnxruntime-gpu build on a host with two visible GPUs (resolution only: no session is built)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_EPS))
    monkeypatch.setattr(providers, "visible_cuda_devices", lambda: 2)


@pytest.mark.parametrize("devices", [None, "cpu", "CPU", ["cpu"]])
def test_cpu_by_default(devices: Any) -> None:
    assert resolve(None, devices) == [Placement("cpu", "cpu", 0, (("CPUExecutionProvider", {}),))]
    assert resolve("cpu", devices)[0].primary == "CPUExecutionProvider"


def test_two_cpu_sessions() -> None:
    placements = resolve(None, ["cpu", "cpu"])
    assert [p.device for p in placements] == ["cpu", "cpu"] and not placements[0].on_gpu


@pytest.mark.parametrize("provider,devices", [("cuda", None), ("cuda", "cuda:0"), (None, "cuda"), (None, 0),
                                              ("tensorrt", [0])])
def test_gpu_provider_missing_names_the_available_ones(provider: str | None, devices: Any) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    with pytest.raises(ProviderUnavailableError) as err:
        resolve(provider, devices, manifest=manifest(), export_dir="/x")
    message = str(err.value)
    assert "CUDAExecutionProvider" in message and "CPUExecutionProvider" in message
    assert f"pip uninstall onnxruntime, then pip install '{REPO}[cuda]' (the package is not on the package index)" \
        in message


@pytest.mark.parametrize(
    "provider,devices,match",
    [
        ("cpu", "cuda:0", "provider 'cpu' cannot run on"),
        ("cuda", "cpu", "needs a CUDA device"),
        ("trt-engine", ["cpu"], "needs a CUDA device"),
        (None, ["cpu", "cuda:0"], "mix the CPU and CUDA devices"),
        (None, "mps", "'mps' is not supported"),
        (None, "npu:0", "is not supported"),
        (None, "cuda:x", "is not supported"),
        (None, True, "is not supported"),
        (None, -1, "negative"),
        (None, [], "empty list"),
        ("rocm", None, "unknown provider 'rocm'"),
        ("cuda", ["cuda:0", 2], r"CUDA device\(s\) \[2\] requested but 2 visible"),
    ],
)
def test_refusals(gpu_host: None, provider: str | None, devices: Any, match: str) -> None:
    with pytest.raises(ProviderUnavailableError, match=match):
        resolve(provider, devices)


def test_cuda_placements(gpu_host: None) -> None:
    placements = resolve(None, [1, "cuda:0", "cuda"])
    assert [(p.provider, p.device, p.device_id) for p in placements] == [
        ("cuda", "cuda:1", 1), ("cuda", "cuda:0", 0), ("cuda", "cuda:0", 0)]
    (name, options), = placements[0].ort_providers
    assert name == "CUDAExecutionProvider" and options["device_id"] == "1" and options["use_tf32"] == "0"
    assert resolve("cuda", None)[0].device == "cuda:0"  # a GPU provider named explicitly means cuda:0


def test_tensorrt_placement(gpu_host: None, tmp_path: Path) -> None:
    [placement] = resolve("tensorrt", "cuda:1", manifest=manifest(), export_dir=tmp_path)
    (trt, trt_opts), (cuda, cuda_opts) = placement.ort_providers
    assert (trt, cuda) == ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    assert trt_opts["device_id"] == cuda_opts["device_id"] == "1"
    assert trt_opts["trt_engine_cache_enable"] == "1" and trt_opts["trt_timing_cache_enable"] == "1"
    assert trt_opts["trt_engine_cache_path"] == trt_opts["trt_timing_cache_path"] == str(tmp_path / "trt_cache")
    assert trt_opts["trt_fp16_enable"] == "0" and "trt_bf16_enable" not in trt_opts
    assert trt_opts["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert trt_opts["trt_profile_opt_shapes"] == "input_ids:128x256,attention_mask:128x256"
    assert trt_opts["trt_profile_max_shapes"] == "input_ids:128x320,attention_mask:128x320"
    other = tmp_path / "elsewhere"
    [moved] = resolve("tensorrt", 0, manifest=manifest(), export_dir=tmp_path, trt_cache_dir=other,
                      provider_options={"trt_builder_optimization_level": 5, "trt_fp16_enable": True})
    opts = moved.ort_providers[0][1]
    assert opts["trt_engine_cache_path"] == str(other)
    assert opts["trt_builder_optimization_level"] == "5" and opts["trt_fp16_enable"] == "1"


def test_compression_inputs_get_a_profile_too() -> None:
    lo, opt, hi = profile_shapes(manifest(compress=True))
    assert lo == "input_ids:1x1,attention_mask:1x1,compress_index_0:1x1x2,compress_weight_0:1x1x2"
    assert opt == "input_ids:128x256,attention_mask:128x256,compress_index_0:128x256x2,compress_weight_0:128x256x2"
    assert hi == "input_ids:128x320,attention_mask:128x320,compress_index_0:128x320x2,compress_weight_0:128x320x2"


def test_profiles_from_the_engine_record() -> None:
    def profile(index: int, lo: int, hi: int, batch: int) -> Profile:
        shape = ((1, lo), (batch, hi), (batch, hi))
        return Profile(index, lo, hi, batch, {"input_ids": shape, "attention_mask": shape})

    record = EngineRecord("10.13.2", "L4", "8.9", (profile(0, 1, 128, 32), profile(1, 129, 320, 8)), 11, "a" * 64,
                          "strongly typed", True, False, 3)
    lo, opt, hi = profile_shapes(manifest().with_engine(record))
    assert lo == "input_ids:1x1,attention_mask:1x1,input_ids:1x129,attention_mask:1x129"
    assert opt == "input_ids:32x128,attention_mask:32x128,input_ids:8x320,attention_mask:8x320"
    assert hi == opt


def test_tensorrt_needs_the_manifest(gpu_host: None) -> None:
    with pytest.raises(ProviderUnavailableError, match="needs the artifact's manifest"):
        resolve("tensorrt", 0)


def test_trt_engine_has_no_ort_providers(gpu_host: None) -> None:
    [placement] = resolve("trt-engine", "cuda:1")
    assert placement.ort_providers == () and placement.primary is None and placement.device_id == 1


class FakeDriver:
    """libcuda's two calls visible_cuda_devices makes, with chosen results."""

    def __init__(self, init_rc: int = 0, count: int = 0, count_rc: int = 0) -> None:
        self.init_rc, self.count, self.count_rc = init_rc, count, count_rc

    def cuInit(self, flags: int) -> int:
        return self.init_rc

    def cuDeviceGetCount(self, count: Any) -> int:
        count._obj.value = self.count  # a ctypes.byref(c_int)
        return self.count_rc


@pytest.mark.parametrize(("driver", "expected"), [
    (FakeDriver(count=3), 3),
    (FakeDriver(init_rc=100), 0),  # CUDA_ERROR_NO_DEVICE: a driver without a GPU (or CUDA_VISIBLE_DEVICES="")
    (FakeDriver(init_rc=999), r"cuInit returned CUresult 999"),
    (FakeDriver(count=2, count_rc=3), r"cuDeviceGetCount failed with CUresult 3"),
    (None, "libcuda.so.1 could not be loaded"),
])
def test_visible_cuda_devices(monkeypatch: pytest.MonkeyPatch, driver: FakeDriver | None, expected: Any) -> None:
    assert providers.visible_cuda_devices is cudart.visible_cuda_devices  # one device count in the package

    def load(name: str) -> FakeDriver:
        assert name == "libcuda.so.1"
        if driver is None:
            raise OSError(f"{name}: cannot open shared object file")
        return driver

    monkeypatch.setattr(cudart.ctypes, "CDLL", load)
    if isinstance(expected, int):
        assert cudart.visible_cuda_devices() == expected
    else:
        with pytest.raises(ProviderUnavailableError, match=expected):
            cudart.visible_cuda_devices()


@pytest.mark.skipif(ctypes.util.find_library("cuda") is None, reason="no NVIDIA driver (libcuda) on this machine")
def test_visible_cuda_devices_honours_cuda_visible_devices() -> None:
    code = "from rerank_runtime.cudart import visible_cuda_devices; print(visible_cuda_devices())"
    hidden = subprocess.run([sys.executable, "-c", code], env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
                            capture_output=True, text=True, timeout=60, check=True)
    assert hidden.stdout.strip() == "0"


@pytest.mark.parametrize("devices,expected", [
    (None, ["cpu"]), ("CUDA", ["cuda:0"]), (3, ["cuda:3"]), (["cuda:1", 0], ["cuda:1", "cuda:0"]),
    (["cpu"] * 2, ["cpu"] * 2)])
def test_device_names(devices: Any, expected: list[str]) -> None:
    assert providers.device_names(devices) == expected
    assert providers.device_names(None, gpu_default=True) == ["cuda:0"]
