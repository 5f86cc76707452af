"""Node placement of ONNX Runtime sessions (rerank_runtime.placement): the profile parsing on real CPU profiles and on
the events a CUDA or TensorRT session writes, and the load-time refusal of a GPU session that left data on the CPU."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from rerank_runtime import onnx_backend
from rerank_runtime.errors import ProviderUnavailableError
from rerank_runtime.manifest import Manifest
from rerank_runtime.onnx_backend import OnnxBackend
from rerank_runtime.placement import CPU, CUDA, TENSORRT, check_placement, placement_from_events, profiled_placement
from rerank_runtime.providers import Placement
from tiny_export import tiny_export


def node(name: str, provider: str, op: str, *outputs: str) -> dict[str, Any]:
    return {"cat": "Node", "name": f"{name}_kernel_time",
            "args": {"provider": provider, "op_name": op, "output_type_shape": [{dtype: [2]} for dtype in outputs]}}


def test_shape_arithmetic_on_the_cpu_is_allowed_data_is_not() -> None:
    events = [node("shape", CPU, "Shape", "int64"), node("dims", CPU, "Concat", "int64"),
              node("matmul", CUDA, "MatMul", "float"), node("copy", CUDA, "MemcpyFromHost", "int64"),
              {"cat": "Session", "name": "model_run", "args": {}}, node("shape", CPU, "Shape", "int64")]
    placement = placement_from_events(events)
    assert placement.counts == {CPU: 2, CUDA: 2} and placement.cpu_data_nodes == ()  # a second run counts once
    assert placement.problems("cuda") == []
    slipped = placement_from_events(events + [node("norm", CPU, "LayerNormalization", "float16")])
    assert slipped.cpu_data_nodes == ("LayerNormalization 'norm'",)
    with pytest.raises(ProviderUnavailableError, match=r"1 node\(s\) computing data ran on the CPU "
                                                       r"\(LayerNormalization 'norm'\).*use provider='trt-engine'"):
        check_placement(slipped, "cuda", "the session")


def test_tensorrt_must_take_the_graph_as_one_subgraph() -> None:
    whole = placement_from_events([node("TRTKernel_graph_main_0", TENSORRT, "TRTKernel_graph_main_0", "float")])
    assert whole.tensorrt_subgraphs == 1 and whole.problems("tensorrt") == []
    split = placement_from_events([node("TRTKernel_graph_main_0", TENSORRT, "TRTKernel_graph_main_0", "float"),
                                   node("gather", CUDA, "GatherND", "float"),
                                   node("TRTKernel_graph_main_1", TENSORRT, "TRTKernel_graph_main_1", "float")])
    assert split.to_dict() == {"nodes_per_provider": {TENSORRT: 2, CUDA: 1}, "cpu_data_nodes": [],
                               "tensorrt_subgraphs": 2}
    with pytest.raises(ProviderUnavailableError, match=r"TensorRT took the graph as 2 subgraphs .*ignores the explicit "
                                                       r"profile shapes.*use provider='cuda' or 'trt-engine'"):
        check_placement(split, "tensorrt", "the session")
    assert split.problems("cuda") == []  # the rule is TensorRT's


def test_profiled_placement_reads_a_real_profile_and_restores_the_options(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_export(tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the profile goes
    options = ort.SessionOptions()
    options.profile_file_prefix = "mine"
    model = str(tmp_path / "model.onnx")

    def run(session: Any) -> None:
        ids = np.array([[3, 4, 5]], dtype=np.int64)
        session.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})

    session, placement = profiled_placement(
        lambda o: ort.InferenceSession(model, o, providers=["CPUExecutionProvider"]), options, run)
    assert set(placement.counts) == {CPU} and placement.counts[CPU] >= 4  # Gather, Cast, Mul, ReduceSum, ...
    assert len(placement.cpu_data_nodes) == placement.counts[CPU]  # every node here computes floats
    assert any(n.startswith("Gather ") for n in placement.cpu_data_nodes), placement.cpu_data_nodes
    assert (options.enable_profiling, options.profile_file_prefix) == (False, "mine")
    assert session.end_profiling() == ""  # profiling stopped after the probe run
    assert list(scratch.iterdir()) == []  # the profile file is gone


def test_a_gpu_session_with_data_on_the_cpu_is_refused_at_load(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The load-time path of a CUDA placement, with the CPU provider standing in for CUDA (no GPU here): the probe
    batch runs profiled, every node lands on the CPU, and the session is refused with the nodes named."""
    tiny_export(tmp_path)
    manifest = Manifest.read(tmp_path)
    run_bound = onnx_backend.run_bound
    monkeypatch.setattr(onnx_backend, "run_bound", lambda s, i, o, device, d: run_bound(s, i, o, "cpu", 0))
    stand_in = Placement("cuda", "cuda:0", 0, (("CPUExecutionProvider", {}),))
    with pytest.raises(ProviderUnavailableError, match=r"session for .*model\.onnx on cuda:0 on provider 'cuda': "
                                                       r"\d+ node\(s\) computing data ran on the CPU \(.*Gather"):
        OnnxBackend(tmp_path, manifest, stand_in)
    backend = OnnxBackend(tmp_path, manifest, Placement("cpu", "cpu", 0, (("CPUExecutionProvider", {}),)))
    assert backend.node_placement is None  # nothing to check on the CPU
