"""The one hand-built tiny export of the runtime and engine tests (onnx.helper, no torch): model.onnx (its table in
external data on request), tokenizer.json and a manifest.json the schema accepts, for every kind's input layout.

The graph: h = TABLE[input_ids] * attention_mask ([B, S]); for each compression stage k in turn,
h[b, j] = sum_t compress_weight_k[b, j, t] * h[b, compress_index_k[b, j, t]] (the model's compression op); base =
sum_j h[b, j]; output `name` = base * scale + bias, with (scale, bias) from the `outputs` mapping. An fp16 graph
computes h, the stages and base in fp16 and the score head in fp32, as the exported mixed-precision graphs do.
`expected` computes the same in numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from compression_twin import apply_plan
from rerank_runtime.compression import plan_inputs
from rerank_runtime.manifest import GraphInfo, Manifest, TensorSpec
from rerank_runtime.spec import ENCODER, LAYERWISE, LIGHTWEIGHT, ModelSpec

VOCAB = 40
TABLE = (np.arange(VOCAB, dtype=np.float32) - 17.0) / 7.0
SINGLE = {"score": (1.0, 0.0)}
TWO_EXITS = {"score_l2_h0": (1.0, 0.0), "score_l3_h1": (-2.0, 0.5)}
TOKENS = ("batch", "sequence")


def tiny_manifest(model_class: str = ENCODER, outputs: dict[str, tuple[float, float]] | None = None, *,
                  compress_layers: tuple[int, ...] = (), ratio: int = 2, precision: str = "fp32",
                  external: bool = False, max_length: int = 16, max_sequence_length: int = 24,
                  **fields: Any) -> Manifest:
    """The manifest of tiny_export's artifact, in memory (files and token layout are measured by write()).

    outputs default to one "score" for the single-score kinds and TWO_EXITS for the others."""
    outputs = outputs or (TWO_EXITS if model_class in (LAYERWISE, LIGHTWEIGHT) else SINGLE)
    stages = len(compress_layers) if ratio > 1 else 0
    inputs = [TensorSpec("input_ids", "int64", TOKENS), TensorSpec("attention_mask", "int64", TOKENS)]
    for i, name in enumerate(plan_inputs(stages)):
        inputs.append(TensorSpec(name, "int64" if "index" in name else "float32", ("batch", f"s{i // 2}", ratio)))
    exits = tuple((int(n.split("_")[1][1:]), int(n.split("_")[2][1:])) for n in outputs if n.startswith("score_l"))
    # consistent with write_tokenizer's vocabulary (the manifest records its ids and load checks them)
    spec = ModelSpec(model_class=model_class, pad_token_id=0, yes_token_id=4, num_layers=4, start_layer=1)
    graph = GraphInfo(file="model.onnx", inputs=tuple(inputs),
                      outputs=tuple(TensorSpec(n, "float32", ("batch",)) for n in outputs),
                      external_data=("model.onnx.data",) if external else ())
    values: dict[str, Any] = dict(
        model_name="tiny", source="tests", family="tiny", spec=spec, precision=precision, graph=graph,
        max_length=max_length, max_sequence_length=max_sequence_length, exits=exits,
        compress_ratio=ratio if stages else 1, compress_layers=tuple(compress_layers) if stages else (),
        defaults={"cutoff_layers": [e[0] for e in exits]} if exits else {})
    values.update(fields)
    return Manifest(**values)


def tiny_graph(manifest: Manifest, outputs: dict[str, tuple[float, float]], id_type: str = "int64") -> Any:
    """The ONNX model of `manifest` (see the module docstring); id_type "int32" declares input_ids int32."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    low = TensorProto.FLOAT16 if manifest.precision == "fp16" else TensorProto.FLOAT
    types = {"int64": TensorProto.INT64, "int32": TensorProto.INT32, "float32": TensorProto.FLOAT}
    inits = [numpy_helper.from_array(TABLE, "table"), numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    if manifest.stages():
        inits += [numpy_helper.from_array(np.array([2], np.int64), "ax2"),
                  numpy_helper.from_array(np.array([-1], np.int64), "axl")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["emb"]),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["emb", "maskf"], ["h32"]),
             helper.make_node("Cast", ["h32"], ["h"], to=low)]
    h = "h"
    for k in range(manifest.stages()):
        nodes += [helper.make_node("Unsqueeze", [f"compress_index_{k}", "axl"], [f"i{k}"]),
                  helper.make_node("GatherND", [h, f"i{k}"], [f"g{k}"], batch_dims=1),
                  helper.make_node("Cast", [f"compress_weight_{k}"], [f"w{k}"], to=low),
                  helper.make_node("Mul", [f"g{k}", f"w{k}"], [f"gw{k}"]),
                  helper.make_node("ReduceSum", [f"gw{k}", "ax2"], [f"h{k}"], keepdims=0)]
        h = f"h{k}"
    nodes += [helper.make_node("ReduceSum", [h, "ax1"], ["base_low"], keepdims=0),
              helper.make_node("Cast", ["base_low"], ["base"], to=TensorProto.FLOAT)]  # the score head stays fp32
    for name, (scale, bias) in outputs.items():
        inits += [numpy_helper.from_array(np.float32(scale), f"{name}_s"),
                  numpy_helper.from_array(np.float32(bias), f"{name}_b")]
        nodes += [helper.make_node("Mul", ["base", f"{name}_s"], [f"{name}_m"]),
                  helper.make_node("Add", [f"{name}_m", f"{name}_b"], [name])]
    inputs = [helper.make_tensor_value_info(t.name, types[id_type if t.name == "input_ids" else t.dtype],
                                            list(t.shape)) for t in manifest.graph.inputs]
    outs = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, ["batch"]) for t in manifest.graph.outputs]
    model = helper.make_model(helper.make_graph(nodes, "tiny", inputs, outs, initializer=inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def tiny_export(root: Path, outputs: dict[str, tuple[float, float]] | None = None, *, model_class: str = ENCODER,
                id_type: str = "int64", **manifest_fields: Any) -> Manifest:
    """Write the tiny artifact to root (model.onnx, its table in model.onnx.data with external=True, tokenizer.json,
    manifest.json) and return the manifest as written. Keyword arguments are tiny_manifest's."""
    import onnx

    manifest = tiny_manifest(model_class, outputs, **manifest_fields)
    heads = outputs or {name: _head(name) for name in manifest.exit_names()}
    model = tiny_graph(manifest, heads, id_type)
    root.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(root / "model.onnx"), save_as_external_data=bool(manifest.graph.external_data),
                    all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=64)  # the table only
    write_tokenizer(root / "tokenizer.json")
    manifest.write(root)
    return Manifest.read(root)


def _head(name: str) -> tuple[float, float]:
    return {**SINGLE, **TWO_EXITS}.get(name, (1.0, 0.0))


def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "hello": 2, "world": 3, "Yes": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def batch(rows: list[list[int]]) -> dict[str, np.ndarray]:
    """Right-padded input_ids / attention_mask of these id rows."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def tiny_feeds(manifest: Manifest, rows: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random feeds of every input the tiny graph of `manifest` takes: ids, a right-padded mask and, per stage, a
    plan that halves the previous stage's length (indices within it, weights in [0, 1))."""
    ids = rng.integers(2, VOCAB, size=(rows, length), dtype=np.int64)
    lengths = rng.integers(1, length + 1, size=rows)
    feeds = {"input_ids": ids, "attention_mask": (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)}
    previous = length
    for k in range(manifest.stages()):
        width = (previous + 1) // 2
        shape = (rows, width, manifest.compress_ratio)
        feeds[f"compress_index_{k}"] = rng.integers(0, previous, size=shape, dtype=np.int64)
        feeds[f"compress_weight_{k}"] = rng.uniform(0, 1, size=shape).astype(np.float32)
        previous = width
    return feeds


def expected(feeds: dict[str, np.ndarray], scale: float = 1.0, bias: float = 0.0) -> np.ndarray:
    """What the fp32 tiny graph outputs for these feeds, with this output's scale and bias."""
    h = (TABLE[feeds["input_ids"]] * feeds["attention_mask"]).astype(np.float64)[..., None]
    k = 0
    while f"compress_index_{k}" in feeds:
        h = apply_plan(h, feeds[f"compress_index_{k}"], np.asarray(feeds[f"compress_weight_{k}"], np.float64))
        k += 1
    return (h[..., 0].sum(axis=1) * scale + bias).astype(np.float32)


def ort_cpu(export: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of export's model.onnx on ONNX Runtime's CPU provider."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))
