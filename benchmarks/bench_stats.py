"""Pure maths of the benchmark: percentiles and the parity gate every contender passes first.

Rank correlation and the score bound are the runtime's own (rerank_runtime.tolerances: ranks, spearman, allclose).
No torch, no onnxruntime: the smoke test imports this module on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rerank_runtime.tolerances import Tolerance, allclose, ranks, spearman

__all__ = ["Gate", "GateResult", "latency_summary", "median", "parity_gate", "percentile", "ranks", "spearman"]


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's default method).

    With n samples, p99 of fewer than 100 samples lies between the two largest: read it as "about the worst call".
    """
    if not samples:
        raise ValueError("percentile of no samples: time at least one call")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    ordered = sorted(float(s) for s in samples)
    rank = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def latency_summary(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean, min and max of call times in seconds, and the number of calls."""
    return {
        "p50": percentile(samples, 50), "p90": percentile(samples, 90), "p99": percentile(samples, 99),
        "mean": float(np.mean(samples)), "min": float(min(samples)), "max": float(max(samples)),
        "calls": float(len(samples)),
    }


# What a contender's scores must achieve against the reference's before it is timed: the tolerance table's rule,
# |got - ref| <= atol + rtol * |ref| for every score (inf atol: ranking only, as for int8), and Spearman's rho over the
# gate set of at least min_spearman.
Gate = Tolerance


@dataclass(frozen=True)
class GateResult:
    passed: bool
    max_abs_diff: float
    spearman: float
    pairs: int
    message: str

    def to_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "max_abs_diff": self.max_abs_diff, "spearman": self.spearman,
                "pairs": self.pairs, "message": self.message}


def parity_gate(got: Sequence[float] | np.ndarray, expected: Sequence[float] | np.ndarray, gate: Gate) -> GateResult:
    """Compare a contender's scores with the reference's. Never raises on a miss: the result says why it failed."""
    g, e = np.asarray(got, dtype=np.float64).ravel(), np.asarray(expected, dtype=np.float64).ravel()
    if g.shape != e.shape:
        return GateResult(False, math.inf, 0.0, int(e.size),
                          f"returned {g.size} scores for {e.size} pairs; a contender must score every pair once")
    if not np.all(np.isfinite(g)):
        bad = int((~np.isfinite(g)).sum())
        return GateResult(False, math.inf, 0.0, int(e.size), f"{bad} of {g.size} scores are not finite")
    close = allclose(g, e, gate)
    worst = close.max_abs_diff
    rho = spearman(g, e)
    problems = []
    if not close.ok:
        problems.append(f"max abs diff {worst:.3g} exceeds atol {gate.atol:g} + rtol {gate.rtol:g} * |ref|")
    if rho < gate.min_spearman:
        problems.append(f"Spearman {rho:.4f} is below {gate.min_spearman}")
    message = "; ".join(problems) or f"max abs diff {worst:.3g}, Spearman {rho:.4f} over {e.size} pairs"
    return GateResult(not problems, worst, rho, int(e.size), message)


def top_k(got: Sequence[float] | np.ndarray, expected: Sequence[float] | np.ndarray, k: int = 10
          ) -> dict[str, bool]:
    """Whether `got` puts the reference's k best pairs at its top: as a set, and in the same order (ties keep input
    order on both sides). A non-finite score never passes."""
    g, e = np.asarray(got, dtype=np.float64).ravel(), np.asarray(expected, dtype=np.float64).ravel()
    k = min(k, e.size)
    top_e, top_g = np.argsort(-e, kind="stable")[:k], np.argsort(-g, kind="stable")[:k]
    same_set = g.shape == e.shape and set(top_e.tolist()) == set(top_g.tolist()) and bool(np.isfinite(g).all())
    return {"same_set": same_set, "same_order": same_set and top_e.tolist() == top_g.tolist()}


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    return float(np.median(np.asarray(values, dtype=np.float64)))
