"""Official metrics against known values, and the Pareto front against hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.evaluation.metrics import METRICS
from harness.results.pareto import pareto_mask


def test_accuracy_known_value():
    assert METRICS["accuracy"]([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5


def test_f1_of_positive_class_known_value():
    # tp=2, fp=1, fn=1 -> precision 2/3, recall 2/3, F1 2/3
    assert METRICS["f1"]([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(2 / 3)


def test_matthews_correlation_known_value():
    # tp=2, tn=1, fp=1, fn=1: (2*1 - 1*1) / sqrt(3*3*2*2) = 1/6
    assert METRICS["matthews_corr"]([1, 1, 1, 0, 0], [1, 1, 0, 1, 0]) == pytest.approx(1 / 6)
    assert METRICS["matthews_corr"]([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0


def test_pearson_and_spearman_known_values():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert METRICS["pearson"]([2 * v + 1 for v in x], x) == pytest.approx(1.0)
    assert METRICS["pearson"]([-v for v in x], x) == pytest.approx(-1.0)
    # monotone but not linear: Spearman 1, Pearson below 1
    cubes = [v**3 for v in x]
    assert METRICS["spearman"](cubes, x) == pytest.approx(1.0)
    # by hand: deviations (-2..2) and (-44, -37, -18, 19, 80): r = 304 / sqrt(10 * 10390)
    assert METRICS["pearson"](cubes, x) == pytest.approx(304 / math.sqrt(103900), abs=1e-12)
    # Spearman with one swapped pair: 1 - 6*sum(d^2)/(n(n^2-1)) = 1 - 6*2/120 = 0.9
    assert METRICS["spearman"]([1, 2, 3, 5, 4], x) == pytest.approx(0.9)


def test_correlation_of_a_constant_prediction_is_nan():
    assert math.isnan(METRICS["pearson"]([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_pareto_front_hand_worked():
    costs = [1, 2, 3, 4, 2, 5]
    scores = [0.5, 0.7, 0.6, 0.9, 0.7, 0.9]
    # (1,.5) cheapest; (2,.7) twice, duplicates both optimal; (3,.6) dominated; (4,.9) best; (5,.9) dominated
    assert pareto_mask(costs, scores).tolist() == [True, True, False, True, True, False]


def test_pareto_front_of_a_lower_is_better_score_hand_worked():
    """Perplexities: the cheap point with the lowest perplexity is optimal, a dearer one only if lower still."""
    costs = [1, 2, 3, 4, 2]
    perplexities = [20.0, 15.0, 18.0, 10.0, 15.0]
    # (1,20) cheapest; (2,15) twice, both optimal; (3,18) dominated by (2,15); (4,10) lowest
    assert pareto_mask(costs, perplexities, higher_is_better=False).tolist() == [True, True, False, True, True]
    # Read as higher-is-better, only the cheapest point (20, the "best") would be on the front.
    assert pareto_mask(costs, perplexities).tolist() == [True, False, False, False, False]


def test_pareto_of_a_lower_is_better_score_matches_brute_force():
    rng = np.random.default_rng(1)
    costs = rng.integers(0, 20, 300).astype(float)
    scores = rng.integers(0, 20, 300).astype(float)
    brute = [
        not any((c2 <= c and s2 <= s and (c2 < c or s2 < s)) for c2, s2 in zip(costs, scores))
        for c, s in zip(costs, scores)
    ]
    assert pareto_mask(costs, scores, higher_is_better=False).tolist() == brute


def test_pareto_ignores_nan_and_handles_empty():
    assert pareto_mask([1, np.nan, 3], [0.1, 0.9, 0.5]).tolist() == [True, False, True]
    assert pareto_mask([], []).tolist() == []


def test_pareto_matches_brute_force_on_random_points():
    rng = np.random.default_rng(0)
    costs = rng.integers(0, 20, 300).astype(float)
    scores = rng.integers(0, 20, 300).astype(float)
    brute = [
        not any((c2 <= c and s2 >= s and (c2 < c or s2 > s)) for c2, s2 in zip(costs, scores))
        for c, s in zip(costs, scores)
    ]
    assert pareto_mask(costs, scores).tolist() == brute


def test_mean_ci_brackets_the_mean_and_narrows_with_more_seeds():
    import numpy as np

    from harness.results.stats import mean_ci

    rng = np.random.default_rng(0)
    few, many = rng.normal(0.8, 0.02, 3), rng.normal(0.8, 0.02, 30)
    a, b = mean_ci(few), mean_ci(many)
    assert a.low <= a.mean <= a.high and b.low <= b.mean <= b.high
    assert (b.high - b.low) < (a.high - a.low)
    assert 0.78 < b.low < 0.8 < b.high < 0.82
    assert mean_ci([0.5]).low is None and str(mean_ci([0.5])) == "0.5000 (n=1)"
    assert mean_ci([0.7, 0.7]).low == 0.7
    assert mean_ci([0.1, 0.2, 0.3]) == mean_ci([0.1, 0.2, 0.3])  # the same report twice
