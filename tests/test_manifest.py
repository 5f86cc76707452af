"""manifest.json: round trip, strict validation (one case per rule) and validate_against."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest
from char_tokenizer import VOCAB, char_tokenizer

from rerank_runtime.errors import ArtifactError, ManifestMismatchError
from rerank_runtime.integrity import FileRecord, TokenLayout, sha256_file
from rerank_runtime.kinds import DEFAULT_PROMPT
from rerank_runtime.manifest import GraphInfo, Manifest, TensorSpec
from rerank_runtime.spec import ENCODER, LAYERWISE, LIGHTWEIGHT, ModelSpec
from tiny_export import tiny_export

# The char tokenizer's facts, as an export of it records them.
LAYOUT = TokenLayout(vocab_size=len(VOCAB), pad_token="<pad>", bos_token="<s>", separator_ids=(VOCAB["\n"],),
                     prompt_ids=tuple(VOCAB[c] for c in DEFAULT_PROMPT))


def layerwise() -> Manifest:
    spec = ModelSpec(model_class=LAYERWISE, pad_token_id=1, bos_token_id=0, yes_token_id=VOCAB["Y"], num_layers=4,
                     start_layer=1)
    graph = GraphInfo(
        file="model.onnx", external_data=("model.onnx.data",),
        inputs=(TensorSpec("input_ids", "int64", ("batch", "sequence")),
                TensorSpec("attention_mask", "int64", ("batch", "sequence"))),
        outputs=(TensorSpec("score_l2_h0", "float32", ("batch",)), TensorSpec("score_l3_h1", "float32", ("batch",))),
    )
    return Manifest(model_name="tiny-layerwise", source="/models/tiny", family="minicpm_layerwise", spec=spec,
                    precision="fp16", graph=graph, max_length=32, max_sequence_length=48, exits=((2, 0), (3, 1)),
                    defaults={"cutoff_layers": [2, 3]}, token_layout=LAYOUT,
                    versions={"torch": "2.13.0"}, verification={"max_abs": 1e-6},
                    files={"model.onnx": FileRecord(10, "a" * 64), "model.onnx.data": FileRecord(0, "b" * 64),
                           "tokenizer.json": FileRecord(30, "c" * 64)})


def artifact_files(root: Path) -> Path:
    """The files layerwise() describes: placeholder graph bytes and the char tokenizer."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model.onnx").write_bytes(b"graph bytes")
    (root / "model.onnx.data").write_bytes(b"")
    char_tokenizer().save(str(root / "tokenizer.json"))
    return root


def test_round_trip_and_file_format(tmp_path: Path) -> None:
    m = layerwise()
    assert Manifest.from_dict(m.to_dict()) == m
    path = m.write(artifact_files(tmp_path))
    text = path.read_text()
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    written = Manifest.read(tmp_path)
    assert written == m.sealed(tmp_path) and written.token_layout == LAYOUT
    assert json.loads(text)["exits"] == [[2, 0], [3, 1]] and json.loads(text)["schema_version"] == 3


def test_write_records_size_and_sha256_of_every_artifact_file(tmp_path: Path) -> None:
    """write() measures the files as they are in the directory; stale records in memory never reach the disk."""
    artifact_files(tmp_path)
    files = json.loads(layerwise().write(tmp_path).read_text())["files"]
    assert sorted(files) == ["model.onnx", "model.onnx.data", "tokenizer.json"]
    for name, record in files.items():
        path = tmp_path / name
        assert record == {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    assert files["model.onnx"] == {"bytes": 11, "sha256": hashlib.sha256(b"graph bytes").hexdigest()}


def test_exit_names() -> None:
    m = layerwise()
    assert m.exit_names() == ("score_l2_h0", "score_l3_h1")
    encoder = Manifest.from_dict(_encoder_dict())
    assert encoder.exit_names() == ("score",)


def _encoder_dict() -> dict[str, Any]:
    d = layerwise().to_dict()
    d.update(exits=[], precision="fp32", tensorrt=None, defaults={})
    d["spec"] = ModelSpec(model_class=ENCODER, pad_token_id=1).to_dict()
    d["token_layout"].update(bos_token=None, separator_ids=[], prompt_ids=[])
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


def _set_file(name: str, record: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["files"].__setitem__(name, record)


def _drop_in(parent: str, key: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: d[parent].pop(key)


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("unknown top-level key", _set("cutoff_layer", [2]), r"unknown field\(s\) \['cutoff_layer'\]"),
    ("missing key", _drop("max_length"), "'max_length' is missing"),
    ("schema version", _set("schema_version", 4), "schema_version 4 is not supported"),
    ("schema version 1", _set("schema_version", 1),
     r"schema_version 1 was written by an older rerank-export.*re-export it with this version"),
    ("schema version 2", _set("schema_version", 2), r"schema_version 2 .*schema 3 the typed TensorRT engine record"),
    ("format", _set("format", "engine"), "'format' must be one of"),
    ("precision", _set("precision", "fp8"), "'precision' must be one of"),
    ("spec unknown field", _set("spec.head_type", "simple"), "'spec' is invalid"),
    ("spec model class", _set("spec.model_class", "cross"), r"'spec.model_class' must be one of \['encoder-only-base'"),
    ("spec not an object", _set("spec", [1]), "'spec' must be a JSON object"),
    ("graph file with a path", _set("graph.file", "../model.onnx"), "'graph.file' must be a file name"),
    ("external data", _set("graph.external_data", "model.onnx.data"), "'graph.external_data' must be"),
    ("external data path", _set("graph.external_data", ["a/b.data"]), "'graph.external_data' must be"),
    ("graph opset (schema 2)", _set("graph.opset", 17), r"unknown field\(s\) \['opset'\] in 'graph.'"),
    ("no inputs", _set("graph.inputs", []), "'graph.inputs' must be a non-empty list"),
    ("dtype", _set("graph.inputs.0.dtype", "float8"), r"'graph.inputs\[0\].dtype' must be one of"),
    ("shape", _set("graph.outputs.1.shape", [-1]), r"'graph.outputs\[1\].shape' must be"),
    ("input name", _set("graph.inputs.1.name", ""), r"'graph.inputs\[1\].name' must be a non-empty string"),
    ("duplicate input", _set("graph.inputs.1.name", "input_ids"), "'graph.inputs' has duplicate names"),
    ("input the host cannot feed", _set("graph.inputs.1.name", "token_type_ids"),
     r"'graph.inputs' must be \['attention_mask', 'input_ids'\] for compress_ratio=1"),
    ("token input rank", _set("graph.inputs.0.shape", ["batch"]), r"gives input_ids the shape \['batch'\]"),
    ("exits shape", _set("exits", [[2, 0, 1]]), "'exits' must be a list of"),
    ("exits bool", _set("exits", [[True, 0]]), "'exits' must be a list of"),
    ("exit without output", _set("exits", [[2, 0], [4, 1]]), r"outputs \['score_l4_h1'\]"),
    ("duplicate exits", _set("exits", [[2, 0], [2, 0]]), "'exits' has duplicates"),
    ("layerwise without exits", _set("exits", []), "must list \\[layer, head\\] pairs"),
    ("compression on layerwise", _set("compress_ratio", 2),
     r"only for \['decoder-only-lightweight'\], not 'decoder-only-layerwise'"),
    ("ratio as string", _set("compress_ratio", "2"), "'compress_ratio' must be an integer >= 1"),
    ("ratio as bool", _set("compress_ratio", True), "'compress_ratio' must be an integer"),
    ("compress layers", _set("compress_layers", [0]), "'compress_layers' must be a list of integers >= 1"),
    ("max sequence", _set("max_sequence_length", 16), "'max_sequence_length' \\(16\\) is below"),
    ("tokenizer path", _set("tokenizer", "/etc/tokenizer.json"), "'tokenizer' must be a file name"),
    ("score (schema 2)", _set("score", "raw logit"), r"unknown field\(s\) \['score'\]"),
    ("spec model_max_length (schema 2)", _set("spec.model_max_length", 512), "'spec' is invalid"),
    ("tensorrt", _set("tensorrt", [1]), "'tensorrt' must be a JSON object"),
    ("versions", _set("versions", {"torch": 2}), "'versions' must be an object mapping"),
    ("defaults", _set("defaults", None), "'defaults' must be a JSON object"),
    # spec: every field type- and range-checked (these used to load and fail at the first call with a raw error)
    ("spec pad id as text", _set("spec.pad_token_id", "0"), r"'spec.pad_token_id' must be an integer >= 0, found '0'"),
    ("spec padding side", _set("spec.padding_side", "middle"),
     r"'spec.padding_side' must be one of \['left', 'right'\], found 'middle'"),
    ("spec negative bos", _set("spec.bos_token_id", -1), r"'spec.bos_token_id' must be null or an integer >= 0"),
    ("spec template", _set("spec.pair_prefix", ["0"]), r"'spec.pair_prefix' must be a list of integers >= 0"),
    ("spec template type", _set("spec.pair_suffix", 2), r"'spec.pair_suffix' must be a list of integers >= 0"),
    ("spec layers as bool", _set("spec.num_layers", True), r"'spec.num_layers' must be null or an integer >= 1"),
    ("spec layer step", _set("spec.layer_sep", 0), r"'spec.layer_sep' must be an integer >= 1, found 0"),
    ("spec positions", _set("spec.max_positions", 0.5), r"'spec.max_positions' must be null or an integer >= 1"),
    ("spec missing class", _drop_in("spec", "model_class"), r"'spec.model_class' is missing"),
    ("spec start beyond layers", _set("spec.start_layer", 5), r"'spec.start_layer' \(5\) must not exceed .*num_layers"),
    ("decoder without yes id", _set("spec.yes_token_id", None),
     r"'spec.yes_token_id' must be an integer >= 0 for model_class 'decoder-only-layerwise'"),
    ("layerwise without layers", _set("spec.num_layers", None),
     r"'spec.num_layers' must be an integer >= 1 for model_class 'decoder-only-layerwise'"),
    # files: one record per artifact file, each with its size and sha256
    ("files missing", _drop("files"), "'files' is missing"),
    ("files without tokenizer", _drop_in("files", "tokenizer.json"),
     r"'files' must record exactly \['model.onnx', 'model.onnx.data', 'tokenizer.json'\]"),
    ("files extra", _set_file("other.bin", {"bytes": 1, "sha256": "d" * 64}), r"'files' must record exactly"),
    ("file size", _set_file("model.onnx", {"bytes": -1, "sha256": "a" * 64}),
     r"'files.model.onnx.bytes' must be an integer >= 0"),
    ("file hash", _set_file("model.onnx", {"bytes": 1, "sha256": "A" * 64}),
     r"'files.model.onnx.sha256' must be 64 lowercase hex digits"),
    ("file record keys", _set_file("model.onnx", {"bytes": 1, "sha256": "a" * 64, "md5": "x"}),
     r"unknown field\(s\) \['md5'\] in 'files.model.onnx.'"),
    # token_layout: typed and read (the tokenizer is checked against it at load)
    ("layout vocab", _set("token_layout.vocab_size", 0), r"'token_layout.vocab_size' must be an integer >= 1"),
    ("layout ids", _set("token_layout.separator_ids", ["\n"]), r"'token_layout.separator_ids' must be a list"),
    ("layout pad", _set("token_layout.pad_token", ""), r"'token_layout.pad_token' must be a non-empty string"),
    ("layout bos", _set("token_layout.bos_token", 3), r"'token_layout.bos_token' must be null or a non-empty string"),
    ("layout unknown", _set("token_layout.yes_token_id", 9),
     r"unknown field\(s\) \['yes_token_id'\] in 'token_layout.'"),
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
    with pytest.raises(ArtifactError, match=r"'graph.inputs' must be \[.*'compress_index_0', 'compress_index_1', "
                                            r"'compress_weight_0', 'compress_weight_1', 'input_ids'\]"):
        Manifest.from_dict({**light, "compress_ratio": 2, "compress_layers": [1, 3]})
    light["graph"]["inputs"] += [{"name": f"compress_{role}_{k}", "dtype": dtype, "shape": ["batch", f"s{k}", 2]}
                                 for k in range(2) for role, dtype in (("index", "int64"), ("weight", "float32"))]
    assert Manifest.from_dict({**light, "compress_ratio": 2, "compress_layers": [1, 3]}).compress_layers == (1, 3)
    with pytest.raises(ArtifactError, match="ascending"):
        Manifest.from_dict({**light, "compress_ratio": 2, "compress_layers": [3, 1]})
    with pytest.raises(ArtifactError, match="must be \\[\\] when compress_ratio is 1"):
        Manifest.from_dict({**light, "compress_layers": [3]})
    with pytest.raises(ArtifactError, match=r"gives compress_index_0 the shape \['batch', 's0', 2\]; expected "
                                            r"\[batch, compressed, 3\]"):
        Manifest.from_dict({**light, "compress_ratio": 3, "compress_layers": [1, 3]})


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
        bad.write(artifact_files(tmp_path))
    assert not (tmp_path / "manifest.json").exists()


def _session(tmp_path: Path, id_type: str = "int64") -> ort.InferenceSession:
    """A session of the tiny graph with layerwise()'s inputs and outputs (input_ids declared id_type)."""
    tiny_export(tmp_path, {"score_l2_h0": (1.0, 0.0), "score_l3_h1": (-1.0, 0.0)}, model_class=LAYERWISE,
                id_type=id_type)
    return ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])


def test_validate_against_a_session(tmp_path: Path) -> None:
    m = layerwise()
    m.validate_against(_session(tmp_path))
    with pytest.raises(ManifestMismatchError, match="input 'input_ids': manifest dtype int64, graph dtype int32"):
        m.validate_against(_session(tmp_path, "int32"))
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


def test_write_refuses_a_tokenizer_that_contradicts_the_spec(tmp_path: Path) -> None:
    """The ids the spec stores are checked against the tokenizer at export time too, not only at load."""
    wrong = Manifest(**{**layerwise().__dict__, "spec": ModelSpec(**{**layerwise().spec.__dict__,
                                                                      "yes_token_id": VOCAB["N"]})})
    with pytest.raises(ManifestMismatchError, match=r"first id of 'Yes' \(spec.yes_token_id\): manifest.json "
                                                    rf"records {VOCAB['N']}, the tokenizer gives {VOCAB['Y']}"):
        wrong.write(artifact_files(tmp_path))
    assert not (tmp_path / "manifest.json").exists()
