"""The one Spearman and the one allclose of the tolerance table (pure numpy, no model)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rerank_runtime.tolerances import Tolerance, allclose, ranks, spearman


def test_spearman_averages_tied_ranks() -> None:
    assert list(ranks(np.array([5.0, 1.0, 5.0, 3.0]))) == [2.5, 0.0, 2.5, 1.0]
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks [0, 1.5, 1.5, 3] against [0, 1, 2, 3]: rho = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10); ordinal ranks give 1.0
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))


def test_spearman_refuses_non_finite_scores_instead_of_ranking_them() -> None:
    """A NaN in the top-ranked position used to leave the ordinal-rank Spearman at 1.0."""
    with pytest.raises(ValueError, match=r"first scores hold nan at position 3"):
        spearman([1.0, 2.0, 3.0, float("nan")], [1.0, 2.0, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"second scores hold inf at position 0"):
        spearman([1.0, 2.0], [float("inf"), 2.0])
    with pytest.raises(ValueError, match="equally long"):
        spearman([1.0, 2.0], [1.0, 2.0, 3.0])


def test_spearman_of_constant_scores_is_defined_explicitly() -> None:
    assert spearman([3.0, 3.0, 3.0], [1.0, 1.0, 1.0]) == 1.0  # the same (all tied) ranking
    assert spearman([3.0, 3.0, 3.0], [1.0, 2.0, 3.0]) == 0.0  # no rank agreement: a flat model must not pass
    assert spearman([7.0], [1.0]) == 1.0


def test_allclose_applies_atol_plus_rtol_of_the_reference_and_reports_the_worst_excess() -> None:
    tol = Tolerance(atol=0.1, rtol=0.5, min_spearman=0.9)
    ref = np.array([[1.0, -10.0, 0.0]])
    inside = allclose(ref + np.array([[0.59, -5.0, 0.09]]), ref, tol)
    assert inside.ok and inside.max_abs_diff == pytest.approx(5.0) and inside.worst_excess < 0
    outside = allclose(ref + np.array([[0.0, 0.0, 0.3]]), ref, tol)
    assert not outside.ok and outside.worst_excess == pytest.approx(0.2) and outside.worst == (0, 2)
    assert outside.max_abs_diff == pytest.approx(0.3)


def test_allclose_fails_on_non_finite_values() -> None:
    tol = Tolerance(atol=1.0, rtol=0.0, min_spearman=0.9)
    for bad in (float("nan"), float("inf")):
        result = allclose(np.array([1.0, bad]), np.array([1.0, 2.0]), tol)
        assert not result.ok and result.worst == (1,) and result.worst_excess == math.inf
    ranking_only = Tolerance(atol=math.inf, rtol=0.0, min_spearman=0.99)
    assert allclose(np.array([5.0, -3.0]), np.array([1.0, 2.0]), ranking_only).ok
    assert not allclose(np.array([5.0, float("nan")]), np.array([1.0, 2.0]), ranking_only).ok
