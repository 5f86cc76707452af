"""Which execution provider ran which node of an ONNX Runtime session, read from ONNX Runtime's own profile.

ONNX Runtime's CUDA provider puts shape arithmetic (Shape, Gather on dims, Concat of dims, ...) on the CPU on purpose,
so `session.disable_cpu_ep_fallback` would refuse every transformer graph. Instead one profiled run counts the nodes
per provider: a CPU node that produces floating-point tensors is a silent fallback. ONNX Runtime's TensorRT provider
applies explicit profile shapes only to a TensorRT subgraph whose inputs are the graph's inputs: when TensorRT takes the
graph as several subgraphs, the profiles are silently ignored (and engines are rebuilt for new shapes), so that is
refused too.

The profile parsing is tested on CPU against real ONNX Runtime profiles; the CUDA and TensorRT verdicts have not been
seen on a GPU yet.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ProviderUnavailableError

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
_DATA_TYPES = {"float", "float16", "bfloat16", "double"}


@dataclass(frozen=True)
class NodePlacement:
    """Nodes per provider in one profiled run; `cpu_data_nodes` are the CPU nodes that produced floating-point data,
    `tensorrt_subgraphs` the fused TensorRT nodes (one per subgraph TensorRT took)."""

    counts: dict[str, int]
    cpu_data_nodes: tuple[str, ...]
    tensorrt_subgraphs: int

    def to_dict(self) -> dict[str, Any]:
        return {"nodes_per_provider": dict(self.counts), "cpu_data_nodes": list(self.cpu_data_nodes),
                "tensorrt_subgraphs": self.tensorrt_subgraphs}

    def problems(self, provider: str) -> list[str]:
        """What is wrong with this placement for a session of `provider` ("cuda" or "tensorrt"); [] when all is well."""
        found = []
        if self.cpu_data_nodes:
            shown = ", ".join(self.cpu_data_nodes[:5]) + (" ..." if len(self.cpu_data_nodes) > 5 else "")
            found.append(f"{len(self.cpu_data_nodes)} node(s) computing data ran on the CPU ({shown})")
        if provider == "tensorrt" and self.tensorrt_subgraphs != 1:
            found.append(f"TensorRT took the graph as {self.tensorrt_subgraphs} subgraphs (expected 1), so ONNX "
                         "Runtime ignores the explicit profile shapes")
        return found


def placement_from_events(events: Iterable[Mapping[str, Any]]) -> NodePlacement:
    """Count the node runs of an ONNX Runtime profile (the JSON list that session.end_profiling() writes)."""
    counts: Counter[str] = Counter()
    cpu_data, trt_nodes = [], set()
    seen: set[str] = set()
    for event in events:
        name, args = str(event.get("name", "")), event.get("args") or {}
        if event.get("cat") != "Node" or not name.endswith("_kernel_time") or "provider" not in args:
            continue
        node = name[: -len("_kernel_time")]
        if node in seen:  # several runs in one profile: count each node once
            continue
        seen.add(node)
        provider = str(args["provider"])
        counts[provider] += 1
        if provider == TENSORRT:
            trt_nodes.add(node)
        if provider == CPU and any(dtype in _DATA_TYPES for out in args.get("output_type_shape", []) for dtype in out):
            cpu_data.append(f"{args.get('op_name', '?')} {node!r}")
    return NodePlacement(dict(counts), tuple(cpu_data), len(trt_nodes))


def profiled_placement(build: Callable[[Any], Any], options: Any,
                       run: Callable[[Any], object]) -> tuple[Any, NodePlacement]:
    """Build a session with profiling on, run it once, and read the placement from the profile.

    build(options) -> session; run(session) runs one batch. `options` (an onnxruntime.SessionOptions, possibly the
    caller's) gets its profiling settings back afterwards; the profile file is deleted. Profiling stops after the run.
    """
    before = (options.enable_profiling, options.profile_file_prefix)
    with tempfile.TemporaryDirectory(prefix="rerank-placement-") as folder:
        options.enable_profiling, options.profile_file_prefix = True, os.path.join(folder, "ort")
        try:
            session = build(options)
        finally:
            options.enable_profiling, options.profile_file_prefix = before
        run(session)
        path = Path(session.end_profiling())
        events = json.loads(path.read_text(encoding="utf-8"))
    return session, placement_from_events(events)


def check_placement(placement: NodePlacement, provider: str, where: str) -> None:
    """Raise ProviderUnavailableError if a CUDA/TensorRT session fell back silently (see problems())."""
    found = placement.problems(provider)
    if found:
        others = "provider='cuda' or 'trt-engine' (a native TensorRT engine)" if provider == "tensorrt" else \
            "provider='trt-engine' (a native TensorRT engine) or 'cpu'"
        raise ProviderUnavailableError(
            f"{where} on provider {provider!r}: " + "; ".join(found) + f" (nodes per provider: {placement.counts}). "
            f"This ONNX Runtime cannot run the whole graph there; use {others}"
        )
