"""manifest.json: round trip, strict validation (one case per rule) and validate_against."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from rerank_runtime.errors import ArtifactError, ManifestMismatchError
from rerank_runtime.manifest import GraphInfo, Manifest, TensorSpec, tensors_from_session
from rerank_runtime.spec import ENCODER, LAYERWISE, LIGHTWEIGHT, ModelSpec


def layerwise() -> Manifest:
    spec = ModelSpec(model_class=LAYERWISE, pad_token_id=0, bos_token_id=1, yes_token_id=9, num_layers=4,
                     start_layer=1)
    graph = GraphInfo(
        file="model.onnx", opset=17, external_data=("model.onnx.data",),
        inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence")),
                TensorSpec("attention_mask", "int64", ("batch", "sequence"))),
        outputs=(TensorSpec("score_l2_h0", "float32", ("batch",)), TensorSpec("score_l3_h1", "float32", ("batch",))),
    )
    return Manifest(model_name="tiny-layerwise", source="/models/tiny", family="minicpm_layerwise", spec=spec,
                    precision="fp16", graph=graph, max_length=32, max_sequence_length=48, exits=((2, 0), (3, 1)),
                    defaults={"cutoff_layers": [2, 3]}, token_layout={"sep": [10], "prompt": "Yes or no?"},
                    tensorrt={"max_batch_size": 8}, versions={"torch": "2.13.0"}, verification={"max_abs": 1e-6})


def test_round_trip_and_file_format(tmp_path: Path) -> None:
    m = layerwise()
    assert Manifest.from_dict(m.to_dict()) == m
    path = m.write(tmp_path)
    text = path.read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    assert Manifest.read(tmp_path) == m
    assert json.loads(text)["exits"] == [[2, 0], [3, 1]] and json.loads(text)["schema_version"] == 1


def test_exit_names_and_heads() -> None:
    m = layerwise()
    assert m.exit_names() == ("score_l2_h0", "score_l3_h1")
    assert m.describe_heads() == "layer 2 (head 0), layer 3 (head 1)"
    encoder = Manifest.from_dict(_encoder_dict())
    assert encoder.exit_names() == ("score",) and "one score output" in encoder.describe_heads()


def _encoder_dict() -> dict[str, Any]:
    d = layerwise().to_dict()
    d.update(exits=[], precision="fp32", tensorrt=None, defaults={})
    d["spec"] = ModelSpec(model_class=ENCODER, pad_token_id=1).to_dict()
    d["graph"]["outputs"] = [{"name": "score", "dtype": "float32", "shape": ["batch"]}]
    return d


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[int(p)] if p.isdigit() else d[p]  # type: ignore[index]
        d[last] = value

    return edit


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d.pop(key)


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("unknown top-level key", _set("cutoff_layer", [2]), r"unknown field\(s\) \['cutoff_layer'\]"),
    ("missing key", _drop("max_length"), "'max_length' is missing"),
    ("schema version", _set("schema_version", 2), "schema_version 2 is not supported"),
    ("format", _set("format", "engine"), "'format' must be one of"),
    ("precision", _set("precision", "fp8"), "'precision' must be one of"),
    ("spec unknown field", _set("spec.head_type", "simple"), "'spec' is invalid"),
    ("spec model class", _set("spec.model_class", "cross"), "'spec' is invalid"),
    ("spec not an object", _set("spec", [1]), "'spec' must be a JSON object"),
    ("graph file with a path", _set("graph.file", "../model.onnx"), "'graph.file' must be a file name"),
    ("external data", _set("graph.external_data", "model.onnx.data"), "'graph.external_data' must be"),
    ("external data path", _set("graph.external_data", ["a/b.data"]), "'graph.external_data' must be"),
    ("opset", _set("graph.opset", 0), "'graph.opset' must be an integer >= 1"),
    ("no inputs", _set("graph.inputs", []), "'graph.inputs' must be a non-empty list"),
    ("dtype", _set("graph.inputs.0.dtype", "float8"), r"'graph.inputs\[0\].dtype' must be one of"),
    ("shape", _set("graph.outputs.1.shape", [-1]), r"'graph.outputs\[1\].shape' must be"),
    ("input name", _set("graph.inputs.1.name", ""), r"'graph.inputs\[1\].name' must be a non-empty string"),
    ("duplicate input", _set("graph.inputs.1.name", "input_ids"), "'graph.inputs' has duplicate names"),
    ("exits shape", _set("exits", [[2, 0, 1]]), "'exits' must be a list of"),
    ("exits bool", _set("exits", [[True, 0]]), "'exits' must be a list of"),
    ("exit without output", _set("exits", [[2, 0], [4, 1]]), r"outputs \['score_l4_h1'\]"),
    ("duplicate exits", _set("exits", [[2, 0], [2, 0]]), "'exits' has duplicates"),
    ("layerwise without exits", _set("exits", []), "must list \\[layer, head\\] pairs"),
    ("compression on layerwise", _set("compress_ratio", 2), "only for 'decoder-only-lightweight'"),
    ("ratio as string", _set("compress_ratio", "2"), "'compress_ratio' must be an integer >= 1"),
    ("ratio as bool", _set("compress_ratio", True), "'compress_ratio' must be an integer"),
    ("compress layers", _set("compress_layers", [0]), "'compress_layers' must be a list of integers >= 1"),
    ("max sequence", _set("max_sequence_length", 16), "'max_sequence_length' \\(16\\) is below"),
    ("tokenizer path", _set("tokenizer", "/etc/tokenizer.json"), "'tokenizer' must be a file name"),
    ("score", _set("score", ""), "'score' must be a non-empty string"),
    ("tensorrt", _set("tensorrt", [1]), "'tensorrt' must be a JSON object"),
    ("versions", _set("versions", {"torch": 2}), "'versions' must be an object mapping"),
    ("defaults", _set("defaults", None), "'defaults' must be a JSON object"),
]


@pytest.mark.parametrize("name,edit,match", CASES, ids=[c[0] for c in CASES])
def test_validation_errors_name_file_and_field(tmp_path: Path, name: str, edit: Callable[..., None],
                                               match: str) -> None:
    d = copy.deepcopy(layerwise().to_dict())
    edit(d)
    (tmp_path / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match=match) as err:
        Manifest.read(tmp_path)
    assert str(tmp_path / "manifest.json") in str(err.value)


def test_kind_specific_rules() -> None:
    encoder = _encoder_dict()
    with pytest.raises(ArtifactError, match="'exits' must be \\[\\] for model_class 'encoder-only-base'"):
        Manifest.from_dict({**encoder, "exits": [[2, 0]]})
    with pytest.raises(ArtifactError, match="must contain 'score'"):
        Manifest.from_dict({**encoder, "graph": layerwise().to_dict()["graph"]})
    light = layerwise().to_dict()
    light["spec"]["model_class"] = LIGHTWEIGHT
    assert Manifest.from_dict({**light, "compress_ratio": 2, "compress_layers": [1, 3]}).compress_layers == (1, 3)
    with pytest.raises(ArtifactError, match="ascending"):
        Manifest.from_dict({**light, "compress_ratio": 2, "compress_layers": [3, 1]})
    with pytest.raises(ArtifactError, match="must be \\[\\] when compress_ratio is 1"):
        Manifest.from_dict({**light, "compress_layers": [3]})


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="manifest.json does not exist"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{\"schema_version\": 1,")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ArtifactError, match="must be a JSON object, found list"):
        Manifest.read(tmp_path)


def test_write_refuses_an_invalid_manifest(tmp_path: Path) -> None:
    bad = Manifest(**{**layerwise().__dict__, "exits": ((7, 0),)})
    with pytest.raises(ArtifactError, match="score_l7_h0"):
        bad.write(tmp_path)
    assert not (tmp_path / "manifest.json").exists()


def _session(tmp_path: Path, id_type: int = TensorProto.INT64) -> ort.InferenceSession:
    ids = helper.make_tensor_value_info("input_ids", id_type, ["batch", "sequence"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"])
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Cast", ["attention_mask"], ["g"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["f", "g"], ["h"]),
             helper.make_node("ReduceSum", ["h", "axis"], ["score_l2_h0"], keepdims=0),
             helper.make_node("Neg", ["score_l2_h0"], ["score_l3_h1"])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"]) for n in ("score_l2_h0", "score_l3_h1")]
    graph = helper.make_graph(nodes, "g", [ids, mask], outs,
                              initializer=[onnx.numpy_helper.from_array(np.array([1]), "axis")])
    path = tmp_path / "model.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_validate_against_a_session(tmp_path: Path) -> None:
    m = layerwise()
    m.validate_against(_session(tmp_path))
    inputs, outputs = tensors_from_session(_session(tmp_path))
    assert inputs == m.graph.inputs and outputs == m.graph.outputs
    with pytest.raises(ManifestMismatchError, match="input 'input_ids': manifest dtype int64, graph dtype int32"):
        m.validate_against(_session(tmp_path, TensorProto.INT32))
    renamed = Manifest(**{**m.__dict__, "graph": GraphInfo(**{**m.graph.__dict__, "outputs": (
        TensorSpec("score_l2_h0", "float32", ("batch",)), TensorSpec("score_l4_h1", "float32", ("batch",)))})})
    with pytest.raises(ManifestMismatchError) as err:
        renamed.validate_against(_session(tmp_path))
    assert ("outputs: manifest has ['score_l2_h0', 'score_l4_h1'], graph has ['score_l2_h0', 'score_l3_h1']"
            in str(err.value))
    ranked = Manifest(**{**m.__dict__, "graph": GraphInfo(**{**m.graph.__dict__, "outputs": (
        TensorSpec("score_l2_h0", "float32", ("batch", 1)), TensorSpec("score_l3_h1", "float32", ("batch",)))})})
    with pytest.raises(ManifestMismatchError, match="graph rank 1"):
        ranked.validate_against(_session(tmp_path))


def test_validate_against_an_io_mapping() -> None:
    m = layerwise()
    io = {"inputs": {"input_ids": "tensor(int64)", "attention_mask": None},
          "outputs": {"score_l2_h0": "float32", "score_l3_h1": "float32"}}
    m.validate_against(io, where="model.plan")
    io["outputs"]["score_l3_h1"] = "float16"
    with pytest.raises(ManifestMismatchError, match="manifest.json and model.plan disagree.*graph dtype float16"):
        m.validate_against(io, where="model.plan")
