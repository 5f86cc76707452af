"""What the exported graphs are made of: numerics that must match torch bit for bit, and the fused ops ONNX Runtime
finds in them (each kept because it measured faster, benchmarks/README.md)."""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import FAMILIES
from rerank_export.families import REGISTRY
from rerank_export.models.decoder import inverse_frequencies, rotary
from rerank_export.onnx_export import OPSET
from rerank_runtime.manifest import Manifest
from rerank_runtime.spec import ENCODER


class _RotaryTables(torch.nn.Module):
    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        self.register_buffer("inv_freq", inverse_frequencies(head_dim, theta), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return rotary(positions, self.inv_freq)


def test_rotary_tables_match_torch_at_long_positions(tmp_path: Path) -> None:
    # At position 600 one ulp of an inverse frequency turns the angle by 4e-5 rad: frequencies folded by the
    # exporter (numpy's pow) instead of torch's moved a trained model's score by 2e-5, twice the fp32 tolerance.
    module = _RotaryTables(64, 10000.0).eval()
    positions = torch.arange(600)[None, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (positions,), dynamo=True, opset_version=OPSET, optimize=True,
                                    dynamic_shapes=({1: torch.export.Dim("sequence", min=1)},), verbose=False)
    program.save(str(tmp_path / "rotary.onnx"))
    session = ort.InferenceSession(str(tmp_path / "rotary.onnx"), providers=["CPUExecutionProvider"])
    cos, sin = session.run(None, {session.get_inputs()[0].name: positions.numpy()})
    want_cos, want_sin = (t.numpy() for t in module(positions))
    assert np.abs(cos - want_cos).max() <= 1e-6 and np.abs(sin - want_sin).max() <= 1e-6


def _ops(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def _ort_ops(path: Path, tmp: Path) -> Counter:
    """Op types of the graph after ONNX Runtime's CPU optimisations (the extended level, where its fusions live)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp / "optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _ops(tmp / "optimised.onnx")


@pytest.mark.parametrize("family", FAMILIES)
def test_gelu_is_one_node(family: str, exported, checkpoint) -> None:
    manifest = Manifest.read(exported(family))
    graph = exported(family) / manifest.graph.file
    ops = _ops(graph)
    opsets = {o.domain: o.version for o in onnx.load(str(graph), load_external_data=False).opset_import}
    assert opsets[""] == OPSET >= 20
    config = json.loads((checkpoint(family) / "config.json").read_text())
    gelu = "gelu" in (config.get("hidden_activation") or config["hidden_act"])  # MiniCPM's MLP is SiLU
    assert (ops["Gelu"] > 0) == gelu and ops["Erf"] == 0


@pytest.mark.parametrize("family", [f for f in FAMILIES if REGISTRY[f].model_class != ENCODER])  # the decoders
def test_rms_norms_fuse_on_the_cpu(family: str, exported, tmp_path: Path) -> None:
    manifest = Manifest.read(exported(family))
    ops = _ort_ops(exported(family) / manifest.graph.file, tmp_path)
    assert ops["SimplifiedLayerNormalization"] > 0 and ops["Pow"] == ops["Sqrt"] == ops["Reciprocal"] == 0
