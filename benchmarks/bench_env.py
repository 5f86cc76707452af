"""What the numbers were measured on (CPU, threads, load, library versions, commit) and how fast this machine
multiplies matrices (a small numpy / ONNX Runtime GEMM probe, run in the same process as the contenders)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rerank_runtime.cores import physical_cores

from rerank_runtime._deps import installed_versions

REPO = Path(__file__).resolve().parent.parent
DISTS = ("bge-rerank-fast", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "tokenizers", "torch", "transformers",
         "matplotlib", "tensorrt")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    return {"commit": git("rev-parse", "HEAD") or "unknown", "dirty": bool(git("status", "--porcelain", "-uno"))}


def versions() -> dict[str, str]:
    return installed_versions(DISTS, python=True)


def environment(threads: int) -> dict[str, Any]:
    return {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(), "logical_cpus": os.cpu_count(), "physical_cores": physical_cores(),
        "threads": threads, "load_average": list(os.getloadavg()), "platform": platform.platform(),
        "versions": versions(), **git_commit(),
    }


# --- GEMM probe ------------------------------------------------------------------------------------------------------


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def numpy_gemm(m: int, k: int, n: int, repeats: int = 5) -> float:
    """GFLOP/s of one fp32 numpy matmul [m, k] x [k, n] (best of `repeats`)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    return 2.0 * m * k * n / _best_seconds(lambda: a @ b, repeats) / 1e9


def _ort_matmul_model(k: int, n: int, int8: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32) * 0.05
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])
    if not int8:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
        inits = [numpy_helper.from_array(weight, "w")]
    else:  # what quantize_dynamic writes: dynamic int8 activations, int8 weights, float scales
        scale = np.float32(np.abs(weight).max() / 127.0)
        inits = [numpy_helper.from_array(np.round(weight / scale).astype(np.int8), "wq"),
                 numpy_helper.from_array(np.array(0, dtype=np.int8), "wz"),
                 numpy_helper.from_array(np.array(scale, dtype=np.float32), "ws")]
        nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                 helper.make_node("MatMulInteger", ["xq", "wq", "xz", "wz"], ["acc"]),
                 helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["xs", "ws"], ["s"]),
                 helper.make_node("Mul", ["accf", "s"], ["y"])]
    graph = helper.make_graph(nodes, "gemm_probe", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def ort_gemm(m: int, k: int, n: int, threads: int, int8: bool = False, repeats: int = 5) -> float:
    """GFLOP/s (int8: GOP/s, counted like FLOPs) of one MatMul [m, k] x [k, n] in an ONNX Runtime CPU session."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(_ort_matmul_model(k, n, int8), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((m, k), dtype=np.float32)
    return 2.0 * m * k * n / _best_seconds(lambda: session.run(["y"], {"x": x}), repeats) / 1e9


def gemm_probe(threads: int, hidden: int = 256, intermediate: int = 1024, tokens: int = 16384) -> dict[str, Any]:
    """ONNX Runtime's own MatMul rate (fp32, and int8 as quantize_dynamic writes it) on a square problem and on the
    mid models' MLP shape at a 32 x 512 batch, with numpy's fp32 rate beside it for reference.

    `fp32_gflops`, the best ONNX Runtime fp32 MatMul rate seen, is what the efficiency column divides by: the rate
    the runtime's own matmul kernel reaches on this machine at these threads. Small shapes (1024 cubed) under-report
    it, so none is used.
    """
    shapes = {"square_2048": (2048, 2048, 2048), "mlp": (tokens, hidden, intermediate)}
    rates: dict[str, float] = {}
    for label, (m, k, n) in shapes.items():
        rates[f"numpy_fp32_{label}"] = numpy_gemm(m, k, n, repeats=7)
        rates[f"ort_fp32_{label}"] = ort_gemm(m, k, n, threads, repeats=7)
        rates[f"ort_int8_{label}"] = ort_gemm(m, k, n, threads, int8=True, repeats=7)
    return {
        "fp32_gflops": max(v for key, v in rates.items() if key.startswith("ort_fp32")),
        "numpy_fp32_gflops": max(v for key, v in rates.items() if key.startswith("numpy_fp32")),
        "int8_gops": max(v for key, v in rates.items() if key.startswith("ort_int8")),
        "rates": rates, "shapes": {k: list(v) for k, v in shapes.items()}, "threads": threads,
        "load_average": list(os.getloadavg()),
    }
