"""Pure maths of the benchmark: percentiles, rank correlation and the parity gate every contender passes first.

No torch, no onnxruntime: the smoke test imports this module on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


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


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), 0-based."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    out = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            out[order[start:end]] = (start + end - 1) / 2.0
            start = end
    return out


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rho with tie-averaged ranks; 1.0 for fewer than two values or two constant inputs."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman needs two equally long score vectors, got {x.shape} and {y.shape}")
    if x.size < 2:
        return 1.0
    rx, ry = ranks(x) - (x.size - 1) / 2.0, ranks(y) - (y.size - 1) / 2.0
    denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return 1.0 if denom == 0.0 else float((rx * ry).sum() / denom)


@dataclass(frozen=True)
class Gate:
    """What a contender's scores must achieve against the reference's before it is timed.

    atol/rtol: |got - ref| <= atol + rtol * |ref| for every score (inf atol: ranking only, as for int8);
    min_spearman: Spearman's rho over the gate set.
    """

    atol: float
    rtol: float
    min_spearman: float


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
    diff = np.abs(g - e)
    worst = float(diff.max()) if diff.size else 0.0
    rho = spearman(g, e)
    excess = float((diff - (gate.atol + gate.rtol * np.abs(e))).max()) if diff.size else 0.0
    problems = []
    if excess > 0:
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
