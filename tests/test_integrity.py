"""A wrong or corrupt artifact is an error at load, never wrong scores.

Each case used to load and score silently: bit-flipped weights, the graph of another export with the same input and
output names (a Gemma graph in an encoder directory, an fp32 graph in an fp16 one), another model's tokenizer.json,
a native TensorRT engine that is not the one recorded.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from rerank_runtime import FlagLLMReranker, FlagReranker
from rerank_runtime import providers
from rerank_runtime.artifact import load_artifact
from rerank_runtime.errors import ArtifactError, ManifestMismatchError
from rerank_runtime.integrity import record_file
from rerank_runtime.manifest import Manifest
from rerank_runtime.trt_engine import EngineRecord, Profile

PAIRS = [["what is panda?", "The giant panda is a bear species endemic to China."], ["hi", "hello"]]


def copy_export(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def rerecord(export: Path, name: str) -> None:
    """Record `name` as it is now in manifest.json, as if the export had been written with it (the size and hash
    checks then pass, and what is left to catch the file is the cross-check against the manifest's other facts)."""
    path = export / "manifest.json"
    data = json.loads(path.read_text())
    data["files"][name] = record_file(export / name).to_dict()
    path.write_text(json.dumps(data))


def flip_one_weight_bit(model: Path, initializer: str) -> None:
    """Flip the lowest exponent bit of the first float of an initializer (halves or doubles it); same file size,
    still a valid protobuf."""
    import onnx

    raw = next(i.raw_data for i in onnx.load(str(model)).graph.initializer if i.name == initializer)
    data = bytearray(model.read_bytes())
    at = data.find(raw)
    assert at > 0 and data.find(raw, at + 1) == -1, "the initializer's bytes must be unique in the file"
    data[at + 2] ^= 0x80  # little-endian float32: byte 2 holds the exponent's lowest bit
    model.write_bytes(bytes(data))


def test_bit_flipped_weights_are_refused_by_hash(exported, tmp_path):
    export = copy_export(exported("xlm_roberta"), tmp_path / "export")
    before = FlagReranker(str(export)).compute_score_array(PAIRS)
    flip_one_weight_bit(export / "model.onnx", "classifier.out_proj.weight")
    with pytest.raises(ArtifactError, match=r"model file .*model\.onnx does not have the sha256 .*manifest\.json"):
        FlagReranker(str(export))
    # the documented switch skips hashing (sizes are still checked): the flipped bit then changes the scores
    after = FlagReranker(str(export), verify_hashes=False).compute_score_array(PAIRS)
    assert not np.array_equal(before, after)


def test_a_file_of_another_size_is_refused_even_without_hashing(exported, tmp_path):
    export = copy_export(exported("gemma"), tmp_path / "export")
    with (export / "tokenizer.json").open("a") as f:
        f.write("\n")  # still valid JSON, one byte longer
    with pytest.raises(ArtifactError, match=r"tokenizer file .*tokenizer\.json has \d+ bytes but manifest\.json"):
        load_artifact(export, verify_hashes=False)


@pytest.mark.parametrize("source,target", [(("gemma", "fp32"), ("xlm_roberta", "fp32")),
                                           (("xlm_roberta", "fp32"), ("xlm_roberta", "fp16"))],
                         ids=["gemma-graph-in-encoder", "fp32-graph-in-fp16"])
def test_the_graph_of_another_export_is_refused(source, target, exported, tmp_path):
    """Same input and output names, so the manifest/graph io check cannot tell; the file record does."""
    export = copy_export(exported(*target), tmp_path / "export")
    shutil.copyfile(exported(*source) / "model.onnx", export / "model.onnx")
    with pytest.raises(ArtifactError, match=r"model file .*model\.onnx (has \d+ bytes|does not have the sha256)"):
        load_artifact(export, verify_hashes=False)
    with pytest.raises(ArtifactError, match=r"model\.onnx"):
        load_artifact(export)


def test_another_models_tokenizer_is_refused(exported, tmp_path):
    export = copy_export(exported("xlm_roberta"), tmp_path / "export")
    shutil.copyfile(exported("gemma") / "tokenizer.json", export / "tokenizer.json")
    with pytest.raises(ArtifactError, match=r"tokenizer file .*tokenizer\.json"):
        load_artifact(export)
    rerecord(export, "tokenizer.json")  # even with a matching record, its facts are not the export's
    with pytest.raises(ManifestMismatchError, match=r"tokenizer\.json does not match .*manifest\.json") as err:
        load_artifact(export)
    assert "pair template" in str(err.value) or "vocabulary size" in str(err.value)


def test_a_tokenizer_with_other_ids_is_refused(exported, tmp_path):
    """Same vocabulary size, "Yes" moved to another id: scores would read the wrong row of the head."""
    export = copy_export(exported("gemma"), tmp_path / "export")
    path = export / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    other = next(token for token, i in vocab.items() if i == vocab["Yes"] + 1)
    vocab["Yes"], vocab[other] = vocab[other], vocab["Yes"]
    path.write_text(json.dumps(data))
    rerecord(export, "tokenizer.json")
    with pytest.raises(ManifestMismatchError, match=r"'Yes'.*spec\.yes_token_id"):
        FlagLLMReranker(str(export))


def test_the_native_engine_is_checked_before_the_tensorrt_backend_is_built(exported, tmp_path, monkeypatch):
    export = copy_export(exported("xlm_roberta"), tmp_path / "export")
    engine = export / "model.engine"
    engine.write_bytes(b"serialized engine")
    manifest = Manifest.read(export)
    shapes = {t.name: ((1, 1), (8, 64), (8, 64)) for t in manifest.graph.inputs}
    record = EngineRecord("10.13.2", "L4", "8.9", (Profile(0, 1, 64, 8, shapes),), engine.stat().st_size,
                          record_file(engine).sha256, "strongly typed", True, False, 3)
    manifest.with_engine(record).write(export)
    built: list[int] = []

    class Engine:
        concurrency = 1

        def __init__(self, export_dir: Path, manifest: Manifest, device_id: int):
            built.append(device_id)

    module = types.ModuleType("rerank_runtime.trt_backend")
    module.TensorRTBackend = Engine  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "rerank_runtime.trt_backend", module)
    monkeypatch.setattr(providers, "visible_cuda_devices", lambda: 1)
    load_artifact(export, provider="trt-engine", devices=0)
    assert built == [0]
    engine.write_bytes(b"serialized enginf")  # same size, other bytes
    with pytest.raises(ArtifactError, match=r"engine file .*model\.engine does not have the sha256"):
        load_artifact(export, provider="trt-engine", devices=0)
    load_artifact(export, provider="trt-engine", devices=0, verify_hashes=False)
    engine.write_bytes(b"short")
    with pytest.raises(ArtifactError, match=r"engine file .*model\.engine has 5 bytes but manifest\.json records 17"):
        load_artifact(export, provider="trt-engine", devices=0, verify_hashes=False)
    engine.unlink()
    with pytest.raises(ArtifactError, match=r"engine file .*model\.engine is missing"):
        load_artifact(export, provider="trt-engine", devices=0)
    assert built == [0, 0], "no backend is built over a file that fails its check"
