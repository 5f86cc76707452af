"""The numpy twin of the graph's compression op (runtime/compression.py builds the plans it applies): the fake
backends and the plan tests run a plan with it."""

from __future__ import annotations

import numpy as np


def apply_plan(h: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """new_h[b, j] = sum_t weight[b, j, t] * h[b, index[b, j, t]]; h is [B, S, H]. The numpy twin of the graph op."""
    b, width, ratio = index.shape
    gathered = np.take_along_axis(h, index.reshape(b, width * ratio, 1), axis=1)
    gathered = gathered.reshape(b, width, ratio, h.shape[-1])
    return (gathered * weight[..., None].astype(h.dtype)).sum(axis=2)


def plan_mask(weight: np.ndarray) -> np.ndarray:
    """The attention mask a stage implies: 1 where the weights sum to > 0."""
    return (weight.sum(axis=-1) > 0).astype(np.int64)
