"""Export-time verification refuses non-finite probe scores (exit 3, naming the probe pair).

The defect: `excess > 0` is False for NaN, and a NaN in the top-ranked probe leaves an ordinal-rank Spearman at 1.0,
so an fp16 overflow on the best probe passed verification. Here the traced graph is edited so that exactly the
top-scored probe comes out NaN (or +inf), which is what an overflow looks like.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rerank_export import cli
from rerank_export.probe import PROBE_PAIRS
from rerank_export.reference import FlagReranker as Reference
from rerank_runtime.spec import ENCODER


def replace_above(path: Path, output: str, threshold: float, value: float) -> None:
    """Rewrite `output` of the ONNX file as Where(output > threshold, value, output)."""
    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        node.output[:] = [f"{output}_raw" if o == output else o for o in node.output]
    graph.initializer.extend([helper.make_tensor(f"{output}_thr", TensorProto.FLOAT, [], [threshold]),
                              helper.make_tensor(f"{output}_bad", TensorProto.FLOAT, [], [value])])
    graph.node.extend([helper.make_node("Greater", [f"{output}_raw", f"{output}_thr"], [f"{output}_hit"]),
                       helper.make_node("Where", [f"{output}_hit", f"{output}_bad", f"{output}_raw"], [output])])
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def top_probe(checkpoint) -> tuple[int, float]:
    """(index of the top-scored probe pair, a threshold between it and the runner-up) for the tiny encoder."""
    scores = Reference(str(checkpoint("xlm_roberta")), batch_size=4).compute_score_array(PROBE_PAIRS)
    order = np.argsort(scores)
    return int(order[-1]), float((scores[order[-1]] + scores[order[-2]]) / 2)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_probe_score_fails_verification_with_exit_3(value, top_probe, checkpoint, tmp_path,
                                                                 monkeypatch, capsys):
    import rerank_export.onnx_export as onnx_export

    index, threshold = top_probe
    trace = onnx_export.trace_to_onnx

    def overflowing_trace(wrapper, family, request, pad_id, path):
        external = trace(wrapper, family, request, pad_id, path)
        replace_above(path, "score", threshold, value)
        return external

    monkeypatch.setattr(onnx_export, "trace_to_onnx", overflowing_trace)
    out = tmp_path / "out"
    assert cli.main(["--model", str(checkpoint("xlm_roberta")), "--output", str(out)]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]  # progress lines come first
    assert err.startswith(f"rerank-export: verification failed: nothing was written to {out}")
    assert f"probe pair {index}" in err and repr(PROBE_PAIRS[index][0]) in err and str(value) in err
    assert "output 'score'" in err and "non-finite" in err and "the ONNX graph" in err
    assert list(tmp_path.iterdir()) == []


def test_the_reference_side_is_checked_too(monkeypatch, checkpoint, tmp_path):
    """A NaN from the PyTorch reference is a failed verification as well, never a silent pass."""
    from rerank_export import verify as verify_module
    from rerank_export.exporter import ExportOptions, export_onnx
    from rerank_export.progress import Progress
    from rerank_runtime.errors import ParityError

    out = export_onnx(ExportOptions(model=str(checkpoint("xlm_roberta")), output=str(tmp_path / "out"), verify=False),
                      Progress([], quiet=True))
    from rerank_export.reference import TorchGraph

    monkeypatch.setattr(TorchGraph, "run", lambda self, names, feeds: [
        np.full(len(feeds["input_ids"]), np.nan, dtype=np.float32) for _ in names])
    with pytest.raises(ParityError, match=r"the fp32 PyTorch reference scored probe pair 0 .*as nan on output 'score'"):
        verify_module.verify(out, checkpoint("xlm_roberta"), ENCODER, "fp32", 512, {})
