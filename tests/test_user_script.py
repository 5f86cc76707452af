"""A user's FlagEmbedding script runs unchanged on the runtime: only the import line and the model paths differ.

The same script text is run twice in fresh interpreters: once importing rerank_export.reference (PyTorch, on the
checkpoints) and once importing rerank_runtime (ONNX Runtime, on the exports). The runtime run must not load torch or
transformers (the script checks sys.modules itself), and both runs must print the same scores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rerank_export.testing.pairs import parity_pairs
from close import FP32, assert_close
FAMILIES = ("gemma", "xlm_roberta", "gemma2_lightweight")

SCRIPT = """\
import json
import sys

from {module} import FlagAutoReranker, FlagLLMReranker

GEMMA = {gemma!r}
ENCODER = {xlm_roberta!r}
LIGHTWEIGHT = {gemma2_lightweight!r}

pairs = json.loads(sys.stdin.read())
llm = FlagLLMReranker(GEMMA, use_fp16=False, max_length=64, batch_size=4)
encoder = FlagAutoReranker.from_finetuned(ENCODER, max_length=128, normalize=True)
light = FlagAutoReranker.from_finetuned(LIGHTWEIGHT, max_length=64, cutoff_layers=[4, 6], compress_ratio=2,
                                        compress_layers=[2, 4])
out = {{
    "classes": [type(r).__module__ + "." + type(r).__name__ for r in (llm, encoder, light)],
    "llm": llm.compute_score(pairs),
    "llm_single": llm.compute_score(pairs[0]),
    "encoder": encoder.compute_score(pairs),
    "light": light.compute_score(pairs, normalize=True),
}}
heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
if FlagLLMReranker.__module__.startswith("rerank_runtime"):
    assert not heavy, f"the runtime loaded {{heavy}}"
out["heavy"] = heavy
print(json.dumps(out))
"""


def run_script(text: str, folder: Path, pairs: list[list[str]]) -> dict[str, Any]:
    folder.mkdir()
    path = folder / "score.py"
    path.write_text(text)
    proc = subprocess.run([sys.executable, str(path)], input=json.dumps(pairs), capture_output=True, text=True,
                          cwd=folder, timeout=300, check=False)
    assert proc.returncode == 0, f"{path} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_same_script_on_reference_and_runtime(checkpoint, exported, tmp_path):
    reference_text = SCRIPT.format(module="rerank_export.reference", **{f: str(checkpoint(f)) for f in FAMILIES})
    runtime_text = SCRIPT.format(module="rerank_runtime", **{f: str(exported(f)) for f in FAMILIES})
    changed = [(a, b) for a, b in zip(reference_text.splitlines(), runtime_text.splitlines()) if a != b]
    assert len(reference_text.splitlines()) == len(runtime_text.splitlines())
    assert [a.split()[0] for a, _ in changed] == ["from", "GEMMA", "ENCODER", "LIGHTWEIGHT"], changed

    pairs = parity_pairs()
    ref = run_script(reference_text, tmp_path / "reference", pairs)
    ours = run_script(runtime_text, tmp_path / "runtime", pairs)

    assert all(c.startswith("rerank_export.reference.") for c in ref["classes"]), ref["classes"]
    assert all(c.startswith("rerank_runtime.") for c in ours["classes"]), ours["classes"]
    assert ours["heavy"] == [] and "torch" in ref["heavy"]  # the probe sees torch when it is there
    assert isinstance(ours["llm_single"], float)
    assert len(ours["llm"]) == len(pairs) and len(ours["light"]) == 2
    for key in ("llm", "llm_single", "encoder", "light"):
        assert_close(ours[key], ref[key], key)
    assert np.ptp(ours["llm"]) > 1e3 * FP32.atol
