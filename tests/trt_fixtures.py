"""Test fixtures shared by the TensorRT tests: manifests as manifest.json holds them, and tiny ONNX graphs of every
input layout written with onnx.helper (no torch), with feeds to match."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rerank_runtime.spec import ENCODER, LAYERWISE, LIGHTWEIGHT, ModelSpec, exit_name

VOCAB, HIDDEN = 50, 16
TOKEN_SHAPE = ["batch", "sequence"]


# ---------------------------------------------------------------------------------------------------------------
# manifests (raw dicts, as manifest.json holds them)

def make_manifest(kind: str = ENCODER, *, max_sequence_length: int = 512, ratio: int = 2,
                  compress_layers: tuple[int, ...] = (2, 4), precision: str = "fp32") -> dict[str, Any]:
    inputs = [{"name": n, "dtype": "int64", "shape": TOKEN_SHAPE} for n in ("input_ids", "attention_mask")]
    exits: list[list[int]] = []
    if kind in (LAYERWISE, LIGHTWEIGHT):
        exits = [[2, 0], [3, 1]]
    if kind != LIGHTWEIGHT:
        ratio, compress_layers = 1, ()
    for k in range(len(compress_layers)):  # stage k's inputs, numbered by stage (runtime/compression.py)
        for role, dtype in (("index", "int64"), ("weight", "float32")):
            shape = ["batch", f"compressed_{k}", ratio]
            inputs.append({"name": f"compress_{role}_{k}", "dtype": dtype, "shape": shape})
    names = [exit_name(layer, head) for layer, head in exits] or ["score"]
    outputs = [{"name": n, "dtype": "float32", "shape": ["batch"]} for n in names]
    spec = ModelSpec(model_class=kind, pad_token_id=1, bos_token_id=2 if kind != ENCODER else None)
    return {"spec": spec.to_dict(), "precision": precision, "exits": exits, "compress_ratio": ratio,
            "compress_layers": list(compress_layers), "max_length": max_sequence_length - 16,
            "max_sequence_length": max_sequence_length, "tensorrt": None, "model_name": "tiny",
            "graph": {"file": "model.onnx", "inputs": inputs, "outputs": outputs}}


def write_export(path: Path, manifest: dict[str, Any]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def tiny_onnx(kind: str, precision: str, rng: np.random.Generator) -> Any:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    manifest = make_manifest(kind, ratio=2, compress_layers=(2,), precision=precision, max_sequence_length=300)
    low = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    inits = [numpy_helper.from_array(rng.normal(size=(VOCAB, HIDDEN)).astype(np.float32), "emb"),
             numpy_helper.from_array(np.array([1], np.int64), "ax1"),
             numpy_helper.from_array(np.array([2], np.int64), "ax2"),
             numpy_helper.from_array(np.array([-1], np.int64), "axl")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["h32"]),
             helper.make_node("Cast", ["h32"], ["h"], to=low),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=low),
             helper.make_node("Unsqueeze", ["m", "axl"], ["m3"]),
             helper.make_node("Mul", ["h", "m3"], ["hm"])]
    pooled = "hm"
    if kind == LIGHTWEIGHT:
        nodes += [helper.make_node("Unsqueeze", ["compress_index_0", "axl"], ["ci"]),
                  helper.make_node("GatherND", ["hm", "ci"], ["g"], batch_dims=1),
                  helper.make_node("Cast", ["compress_weight_0"], ["cw"], to=low),
                  helper.make_node("Unsqueeze", ["cw", "axl"], ["cw4"]),
                  helper.make_node("Mul", ["g", "cw4"], ["gw"]),
                  helper.make_node("ReduceSum", ["gw", "ax2"], ["pooled"], keepdims=0)]
        pooled = "pooled"
    nodes += [helper.make_node("ReduceSum", [pooled, "ax1"], ["s"], keepdims=0),
              helper.make_node("Cast", ["s"], ["s32"], to=TensorProto.FLOAT),  # the score head stays fp32
              helper.make_node("Tanh", ["s32"], ["t"])]
    for i, out in enumerate(manifest["graph"]["outputs"]):
        inits.append(numpy_helper.from_array(rng.normal(size=(HIDDEN,)).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", ["t", f"w{i}"], [out["name"]]))
    types = {"int64": TensorProto.INT64, "float32": TensorProto.FLOAT}
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(i["name"], types[i["dtype"]], i["shape"])
                        for i in manifest["graph"]["inputs"]],
        [helper.make_tensor_value_info(o["name"], TensorProto.FLOAT, ["batch"]) for o in manifest["graph"]["outputs"]],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model, manifest


def tiny_feeds(manifest: dict[str, Any], batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = rng.integers(3, VOCAB, size=(batch, length), dtype=np.int64)
    lengths = rng.integers(1, length + 1, size=batch)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": mask}
    for k in range(len(manifest["compress_layers"])):
        compressed = (length + 1) // 2
        feeds[f"compress_index_{k}"] = rng.integers(0, length, size=(batch, compressed, 2), dtype=np.int64)
        feeds[f"compress_weight_{k}"] = rng.uniform(0, 1, size=(batch, compressed, 2)).astype(np.float32)
    return feeds


def save_export(path: Path, model: Any, manifest: dict[str, Any]) -> Path:
    import onnx

    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="model.onnx.data", size_threshold=256)  # the weight table goes out
    return write_export(path, manifest)


def ort_cpu(export: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))
