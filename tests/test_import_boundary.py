"""rerank_runtime never imports torch or transformers, not even indirectly.

A fresh interpreter imports every rerank_runtime module, loads a tiny export directory (built here with onnx.helper),
scores a batch through OnnxBackend, and then reports which heavy modules ended up in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from rerank_runtime.manifest import GraphInfo, Manifest, TensorSpec
from rerank_runtime.spec import ENCODER, ModelSpec

FORBIDDEN = ("torch", "transformers", "onnx", "onnxscript", "safetensors", "rerank_export")

CHILD = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    import numpy as np
    import rerank_runtime
    from rerank_runtime.artifact import load_artifact
    from rerank_runtime.spec import GraphRequest

    failed = {}
    for info in pkgutil.iter_modules(rerank_runtime.__path__):
        try:
            importlib.import_module("rerank_runtime." + info.name)
        except Exception as exc:  # reported, then asserted on by the parent
            failed[info.name] = repr(exc)
    loaded = load_artifact(sys.argv[1])
    ids = np.array([[3, 4, 5], [6, 7, 0]], dtype=np.int64)
    mask = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.int64)
    (scores,) = loaded.backend.run(GraphRequest(), {"input_ids": ids, "attention_mask": mask})
    print(json.dumps({"scores": scores.tolist(), "failed": failed, "modules": sorted(sys.modules)}))
    """
)


def _tiny_export(root: Path) -> None:
    """score = sum(input_ids * attention_mask) as float."""
    nodes = [helper.make_node("Mul", ["input_ids", "attention_mask"], ["kept"]),
             helper.make_node("Cast", ["kept"], ["keptf"], to=TensorProto.FLOAT),
             helper.make_node("ReduceSum", ["keptf", "axis"], ["score"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "boundary",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=[onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                    str(root / "model.onnx"))
    (root / "tokenizer.json").write_text(json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hi": 1}, "unk_token": "[UNK]"},
    }))
    io = (TensorSpec("input_ids", "int64", ("batch", "sequence")),
          TensorSpec("attention_mask", "int64", ("batch", "sequence")))
    Manifest(model_name="boundary", source="tests", family="tiny", spec=ModelSpec(model_class=ENCODER, pad_token_id=0),
             precision="fp32", graph=GraphInfo("model.onnx", 17, io, (TensorSpec("score", "float32", ("batch",)),)),
             max_length=8, max_sequence_length=8).write(root)


def test_runtime_never_imports_torch_or_transformers(tmp_path: Path) -> None:
    _tiny_export(tmp_path)
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, report["failed"]
    assert report["scores"] == [12.0, 13.0]
    heavy = sorted({m.split(".")[0] for m in report["modules"]} & set(FORBIDDEN))
    assert heavy == [], f"rerank_runtime pulled in {heavy}"
    assert "onnxruntime" in report["modules"] and "tokenizers" in report["modules"]
