"""The one tolerance table: how far scores may be from the fp32 PyTorch reference, per (precision, provider).

A score passes when |got - ref| <= atol + rtol * |ref|; a ranking passes when Spearman's rho over the probe set is
at least min_spearman. fp32 numbers are what graph parity measures on CPU (about 1e-6 on the tiny models) with
headroom; reduced precisions are bounded by their rounding (fp16: 11 bits, bf16: 8 bits) and int8 by its dynamic
quantisation, where the ranking is what matters.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    min_spearman: float


TOLERANCES: dict[tuple[str, str], Tolerance] = {
    ("fp32", "cpu"): Tolerance(1e-5, 1e-5, 0.9999),
    ("fp32", "cuda"): Tolerance(1e-3, 1e-3, 0.999),  # TF32-free fp32 GEMMs still reorder sums
    ("fp32", "tensorrt"): Tolerance(1e-3, 1e-3, 0.999),
    ("fp16", "cpu"): Tolerance(3e-2, 2e-2, 0.99),
    ("fp16", "cuda"): Tolerance(3e-2, 2e-2, 0.99),
    ("fp16", "tensorrt"): Tolerance(5e-2, 3e-2, 0.99),
    ("bf16", "cpu"): Tolerance(1.5e-1, 5e-2, 0.98),
    ("bf16", "cuda"): Tolerance(1.5e-1, 5e-2, 0.98),
    ("bf16", "tensorrt"): Tolerance(1.5e-1, 5e-2, 0.98),
    ("int8", "cpu"): Tolerance(float("inf"), 0.0, 0.99),  # judged by ranking only
}


def tolerance(precision: str, provider: str) -> Tolerance:
    family = "tensorrt" if provider in ("tensorrt", "trt-engine") else provider
    try:
        return TOLERANCES[(precision, family)]
    except KeyError:
        raise KeyError(f"no tolerance for precision {precision!r} on {provider!r}; known: {sorted(TOLERANCES)}") from None
