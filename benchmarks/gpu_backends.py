"""The GPU backends benchmarks/gpu_check.py can run: which are present here (and why not), the versions that matter,
and how each is built over one model and precision.

  torch-cuda    the PyTorch reference on cuda:0 (FlagEmbedding-style: use_fp16 / use_bf16), the contender
  ort-cuda      the runtime on ONNX Runtime's CUDA execution provider
  ort-tensorrt  the runtime on ONNX Runtime's TensorRT execution provider
  trt-engine    the runtime on a native TensorRT engine (`rerank-export engine`)
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_env import git_commit

BACKENDS = ("torch-cuda", "ort-cuda", "ort-tensorrt", "trt-engine")
TOLERANCE_KEY = {"torch-cuda": "cuda", "ort-cuda": "cuda", "ort-tensorrt": "tensorrt", "trt-engine": "trt-engine"}
_ORT_PROVIDER = {"ort-cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}
DISTS = ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu13-libs",
         "tensorrt-cu12-libs", "cuda-python", "cuda-bindings", "cupy-cuda13x", "cupy-cuda12x", "numpy", "onnx",
         "tokenizers", "transformers")


def _try(module: str) -> tuple[Any, str | None]:
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # ImportError, or a CUDA library that fails to load
        return None, f"{module} cannot be imported ({type(exc).__name__}: {exc})"


def device_reason() -> str | None:
    from rerank_runtime.cudart import visible_cuda_devices
    from rerank_runtime.errors import ProviderUnavailableError

    try:
        return None if visible_cuda_devices() > 0 else "the NVIDIA driver shows no CUDA device (CUDA_VISIBLE_DEVICES?)"
    except ProviderUnavailableError as exc:
        return str(exc)


def ort_tensorrt_major(ort: Any) -> int | None:
    """The libnvinfer major that ONNX Runtime's TensorRT provider library links, read from the library file."""
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_tensorrt.so"
    if not lib.is_file():
        return None
    found = re.search(rb"libnvinfer\.so\.(\d+)", lib.read_bytes())
    return int(found.group(1)) if found else None


def unavailable() -> dict[str, str | None]:
    """Backend -> None where it can run here, else the reason it cannot (nothing is installed or downloaded)."""
    device = device_reason()
    reasons: dict[str, str | None] = {}
    torch, why = _try("torch")
    if why is None and not torch.cuda.is_available():
        why = f"torch {torch.__version__} has no usable CUDA device (torch.cuda.is_available() is False)"
    reasons["torch-cuda"] = why
    ort, why_ort = _try("onnxruntime")
    for name, provider in _ORT_PROVIDER.items():
        if why_ort is not None:
            reasons[name] = why_ort
        elif provider not in ort.get_available_providers():
            reasons[name] = (f"onnxruntime {ort.__version__} has no {provider} (providers: "
                             f"{ort.get_available_providers()}); the [cuda] extra installs onnxruntime-gpu")
        else:
            reasons[name] = device
    if reasons["ort-tensorrt"] is None:
        reasons["ort-tensorrt"] = _nvinfer_reason(ort)
    trt, why = _try("tensorrt")
    cuda, why_cuda = _try("cuda.bindings.runtime")
    reasons["trt-engine"] = why or why_cuda or device
    del trt, cuda
    return reasons


def _nvinfer_reason(ort: Any) -> str | None:
    major = ort_tensorrt_major(ort)
    if major is None:
        return None
    _try("tensorrt_libs")  # the pip wheel's loader, as the runtime does before a TensorRT session
    try:
        ctypes.CDLL(f"libnvinfer.so.{major}")
    except OSError as exc:
        return (f"ONNX Runtime's TensorRT provider links libnvinfer.so.{major} (TensorRT {major}.x), which cannot be "
                f"loaded here ({exc}); the [cuda] extra installs tensorrt-cu13-libs {major}.x")
    return None


def versions() -> dict[str, Any]:
    """Driver, CUDA, cuda-bindings, ONNX Runtime and the TensorRT it links, TensorRT, torch, the GPU, the commit."""
    out: dict[str, Any] = {"python": platform.python_version(), **git_commit(), "dists": {}}
    if out["commit"] == "unknown":  # a copy of the working tree without .git (see gpu_session.py)
        out["commit"], out["dirty"] = os.environ.get("RERANK_COMMIT", "unknown"), None
    for dist in DISTS:
        try:
            out["dists"][dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, check=False) if _which("nvidia-smi") else None
    out["nvidia_smi"] = smi.stdout.strip().splitlines() if smi and smi.returncode == 0 else None
    cudart, _ = _try("cuda.bindings.runtime")
    if cudart is not None and device_reason() is None:
        from rerank_runtime.cudart import CudaRuntime

        cuda = CudaRuntime()
        info = cuda.device_info(0)
        out["cuda"] = {"driver_supports": cuda.driver_version(), "cuda_bindings_runtime": cuda.runtime_version(),
                       "gpu": info.name, "compute_capability": info.compute_capability}
    torch, _ = _try("torch")
    if torch is not None:
        out["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda,
                        "tf32_matmul": getattr(torch.backends.cuda.matmul, "allow_tf32", None)}
        if torch.cuda.is_available():
            out["torch"]["gpu"] = torch.cuda.get_device_name(0)
            out["torch"]["cudnn"] = torch.backends.cudnn.version()
    ort, _ = _try("onnxruntime")
    if ort is not None:
        info = getattr(importlib.import_module("onnxruntime.capi.build_and_package_info"), "cuda_version", None)
        out["onnxruntime"] = {"version": ort.__version__, "providers": ort.get_available_providers(),
                              "built_for_cuda": info, "tensorrt_provider_links_libnvinfer": ort_tensorrt_major(ort)}
    trt, _ = _try("tensorrt")
    out["tensorrt"] = getattr(trt, "__version__", None)
    return out


def _which(name: str) -> bool:
    import shutil

    return shutil.which(name) is not None


@dataclass
class Built:
    """One backend over one model and precision: `reranker` for parity (compute_score_array), `front` for timing
    (Front.run: the request front and the backend, as compute_score runs each batch), `stream` the address of the
    CUDA stream it computes on (None: unknown, timed by the host clock)."""

    reranker: Any
    front: Any
    stream: int | None
    info: dict[str, Any] = field(default_factory=dict)


def build(name: str, checkpoint: str, export_dir: Path | None, precision: str, settings: dict[str, Any],
          engine_options: Any, cuda: Any) -> Built:
    """cuda: a rerank_runtime.cudart.CudaRuntime, or None without cuda-bindings."""
    from rerank_runtime.rerankers import FlagAutoReranker

    if name == "torch-cuda":
        import torch
        from rerank_export.reference import load_reference

        loaded = load_reference(checkpoint, model_class=None, devices="cuda:0", use_fp16=precision == "fp16",
                                use_bf16=precision == "bf16")
        return Built(FlagAutoReranker.from_loaded(loaded, **settings), loaded.front,
                     int(torch.cuda.current_stream().cuda_stream), {"dtype": loaded.front.dtype})
    assert export_dir is not None
    if name in _ORT_PROVIDER:
        return _ort(name, export_dir, settings, cuda)
    from rerank_runtime.artifact import load_artifact

    info = ensure_engine(export_dir, engine_options)
    loaded = load_artifact(export_dir, provider="trt-engine", devices="cuda:0")
    engine = loaded.front.backend  # one device: the TensorRTBackend itself
    return Built(FlagAutoReranker.from_loaded(loaded, **settings), loaded.front, engine.stream_handle, info)


def _ort(name: str, export_dir: Path, settings: dict[str, Any], cuda: Any) -> Built:
    """The runtime over ONNX Runtime, on a stream of ours (user_compute_stream) so that events can time it."""
    from tokenizers import Tokenizer

    from rerank_runtime.front import GraphFront, ServedGraph
    from rerank_runtime.manifest import Manifest
    from rerank_runtime.onnx_backend import OnnxBackend
    from rerank_runtime.providers import resolve
    from rerank_runtime.rerankers import FlagAutoReranker
    from rerank_runtime.spec import Loaded

    manifest = Manifest.read(export_dir)
    stream = cuda.handle(cuda.stream_create()) if cuda is not None else None
    options = {"user_compute_stream": stream} if stream is not None else None
    [placement] = resolve(name.removeprefix("ort-"), "cuda:0", manifest=manifest, export_dir=export_dir,
                          provider_options=options)
    backend = OnnxBackend(export_dir, manifest, placement)
    front = GraphFront(ServedGraph.of(manifest, export_dir), backend)
    loaded = Loaded(manifest.spec, Tokenizer.from_file(str(export_dir / manifest.tokenizer)), front,
                    dict(manifest.defaults))
    found = backend.node_placement
    return Built(FlagAutoReranker.from_loaded(loaded, **settings), front, stream,
                 {"placement": found.to_dict() if found else None, "session_providers": backend.session_providers()})


def ensure_engine(export_dir: Path, options: Any) -> dict[str, Any]:
    """Build the export's engine unless the one recorded was built here (same TensorRT, same GPU)."""
    import time

    import tensorrt as trt

    from rerank_export.tensorrt_build import build_engine
    from rerank_runtime.cudart import CudaRuntime
    from rerank_runtime.manifest import Manifest

    record = Manifest.read(export_dir).tensorrt
    device = CudaRuntime().device_info(options.device_id)
    reuse = (record is not None and record.tensorrt_version == trt.__version__
             and (export_dir / record.engine_file).is_file() and record.compute_capability == device.compute_capability
             and max(p.max_batch_size for p in record.profiles) == options.max_batch_size)
    started = time.monotonic()
    if not reuse:
        build_engine(export_dir, options, progress=lambda line: print(f"    {line}", flush=True))
        record = Manifest.read(export_dir).tensorrt
    assert record is not None
    return {"engine_reused": reuse, "build_seconds": 0.0 if reuse else round(time.monotonic() - started, 1),
            "engine_bytes": record.engine_bytes, "profiles": len(record.profiles),
            "precision_handling": record.precision_handling}
