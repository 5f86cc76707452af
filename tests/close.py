"""The tests' one score comparison: rerank_runtime.tolerances.allclose (the table's rule, NaN never passes) with a
message that says how far off the scores are."""

from __future__ import annotations

from typing import Any

import numpy as np

from rerank_runtime.tolerances import Tolerance, allclose, tolerance

FP32 = tolerance("fp32", "cpu")


def assert_close(got: Any, want: Any, what: str = "scores", tol: Tolerance = FP32) -> None:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    close = allclose(got, want, tol)
    assert close.ok, (f"{what}: max abs diff {close.max_abs_diff:.3g}, worst at {close.worst} "
                      f"(got {got[close.worst]}, want {want[close.worst]}) beyond atol {tol.atol} + rtol {tol.rtol}")
