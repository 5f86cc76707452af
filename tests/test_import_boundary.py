"""rerank_runtime never imports torch or transformers, not even indirectly.

A fresh interpreter imports every rerank_runtime module, loads the tiny export (tests/tiny_export.py), scores a batch
through ONNX Runtime, and then reports which heavy modules ended up in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from tiny_export import expected, tiny_export

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
    (scores,) = loaded.front.run(GraphRequest(), {"input_ids": ids, "attention_mask": mask})
    print(json.dumps({"scores": scores.tolist(), "failed": failed, "modules": sorted(sys.modules)}))
    """
)


def test_runtime_never_imports_torch_or_transformers(tmp_path: Path) -> None:
    tiny_export(tmp_path)
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["failed"] == {}, report["failed"]
    feeds = {"input_ids": np.array([[3, 4, 5], [6, 7, 0]]), "attention_mask": np.array([[1, 1, 1], [1, 1, 0]])}
    assert np.allclose(report["scores"], expected(feeds), rtol=0, atol=1e-5)
    heavy = sorted({m.split(".")[0] for m in report["modules"]} & set(FORBIDDEN))
    assert heavy == [], f"rerank_runtime pulled in {heavy}"
    assert "onnxruntime" in report["modules"] and "tokenizers" in report["modules"]
