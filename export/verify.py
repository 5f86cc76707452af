"""Export-time verification: score the probe set through ONNX Runtime and through the PyTorch reference."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rerank_runtime.errors import NonFiniteScoreError, ParityError
from rerank_runtime.manifest import Manifest
from rerank_runtime.tolerances import allclose, spearman, tolerance

from .probe import PROBE_PAIRS

# How each precision is executed on a CPU for verification.
CPU_METHOD = {
    "fp32": "ONNX Runtime CPU, as exported",
    "fp16": "ONNX Runtime CPU, as exported",
    "int8": "ONNX Runtime CPU, as exported",
    "bf16": "ONNX Runtime CPU on a copy whose bf16 weights and casts are widened to fp32 (ONNX Runtime has no bf16 "
            "CPU kernels): checks the graph and the bf16-rounded weights, not bf16 activation rounding",
}


def widen_bf16(src: Path, dst: Path) -> None:
    """Copy an artifact, rewriting model.onnx so that every bf16 tensor and cast becomes fp32 (and its manifest's
    file records with it)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    shutil.copytree(src, dst, dirs_exist_ok=True)
    model = onnx.load(str(src / "model.onnx"))
    graph = model.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.BFLOAT16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    for node in graph.node:
        for attr in node.attribute:
            if attr.name == "to" and attr.i == TensorProto.BFLOAT16:
                attr.i = TensorProto.FLOAT
            if attr.t is not None and attr.t.data_type == TensorProto.BFLOAT16:
                attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.BFLOAT16:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.save(model, str(dst / "model.onnx"))
    Manifest.read(dst).write(dst)  # the copy's manifest records the widened graph it holds


def verify(export_dir: Path, checkpoint: Path, model_class: str, precision: str, max_length: int,
           call: dict[str, Any], counter: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Compare the artifact with the fp32 reference on the probe set; raise ParityError beyond the tolerance or on
    any NaN or infinite probe score (from either side), naming the probe pair. counter(label) gives the tracker
    factory each side's scoring reports to (progress.Progress.counter), else nothing is shown."""
    def show(label: str) -> Any:
        return counter(label) if counter is not None else False

    from rerank_runtime.rerankers import FlagAutoReranker as Runtime

    from .reference import FlagAutoReranker as Reference

    kwargs = dict(max_length=min(max_length, 512), batch_size=4)
    reference = Reference.from_finetuned(str(checkpoint), model_class=model_class, **kwargs)
    with _non_finite_fails("the fp32 PyTorch reference"):
        expected = np.atleast_2d(reference.compute_score_array(PROBE_PAIRS, show_progress_bar=show("reference"),
                                                               **call))
    with tempfile.TemporaryDirectory() as tmp:
        target = export_dir
        if precision == "bf16":
            target = Path(tmp) / "widened"
            widen_bf16(export_dir, target)
        runtime = Runtime.from_finetuned(str(target), model_class=model_class, devices="cpu", **kwargs)
        with _non_finite_fails(f"the ONNX graph in {export_dir}"):
            got = np.atleast_2d(runtime.compute_score_array(PROBE_PAIRS, show_progress_bar=show("ONNX Runtime"),
                                                            **call))
    tol = tolerance(precision, "cpu")
    close = allclose(got, expected, tol)
    rho = min(spearman(g, e) for g, e in zip(got, expected))
    result = {"provider": "CPUExecutionProvider", "method": CPU_METHOD[precision], "pairs": len(PROBE_PAIRS),
              "outputs": int(got.shape[0]), "max_abs_diff": close.max_abs_diff, "spearman": rho,
              "tolerance": {"atol": tol.atol if np.isfinite(tol.atol) else None,  # JSON has no Infinity
                            "rtol": tol.rtol, "min_spearman": tol.min_spearman}, "passed": True}
    if not close.ok or rho < tol.min_spearman:
        raise ParityError(
            f"{export_dir} scores differ from the fp32 reference beyond the {precision} tolerance: max abs diff "
            f"{close.max_abs_diff:.3g} (atol {tol.atol}, rtol {tol.rtol}), Spearman {rho:.4f} (min {tol.min_spearman})",
            diffs={"max_abs_diff": close.max_abs_diff, "spearman": rho}, tolerance=tol.atol,
        )
    return result


@contextmanager
def _non_finite_fails(side: str) -> Iterator[None]:
    """Turn the runtime's NonFiniteScoreError into a failed verification that names the probe pair."""
    try:
        yield
    except NonFiniteScoreError as exc:
        query, passage = PROBE_PAIRS[exc.index]
        raise ParityError(
            f"{side} scored probe pair {exc.index} ({query!r}, {passage[:40]!r}...) as {exc.value} on output "
            f"{exc.output!r}; a non-finite score never passes verification (an fp16 overflow is the usual cause)",
            diffs={"non_finite_probe": float(exc.index)},
        ) from None
