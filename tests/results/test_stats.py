"""Seed means, the evaluation set's sampling error, the seeds × examples interval and the paired tests,
checked against formulas, hand-worked examples and scipy. Simulations are in test_stats_calibration.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.core.errors import HarnessError
from harness.results.paired import (
    holm,
    holm_reject,
    mcnemar_exact,
    paired_difference,
    predicted_power,
)
from harness.results.stats import (
    CrossedVariance,
    binomial_standard_error,
    crossed_half_width,
    crossed_mean_ci,
    crossed_variance,
    mean_ci,
    mean_standard_error,
)

# Student t quantiles t_{0.975, df}, from standard tables.
T_975_DF1 = 12.706204736174707
T_975_DF2 = 4.302652729911275


def test_interval_is_the_student_t_interval():
    ci = mean_ci([0.80, 0.84, 0.82])
    half = T_975_DF2 * 0.02 / math.sqrt(3)  # sample sd of the three values is exactly 0.02
    assert ci.mean == pytest.approx(0.82)
    assert (ci.low, ci.high) == pytest.approx((0.82 - half, 0.82 + half))
    assert ci.half_width == pytest.approx(half)
    assert ci.n == 3
    assert str(ci) == f"0.8200 ± {half:.4f} (n=3)"


def test_seed_interval_matches_scipy():
    values = [0.71, 0.74, 0.69, 0.75]
    ci = mean_ci(values, confidence=0.9)
    low, high = sps.t.interval(0.9, len(values) - 1, loc=np.mean(values), scale=sps.sem(values))
    assert (ci.low, ci.high) == pytest.approx((low, high), rel=1e-12)
    assert ci.std_error == pytest.approx(sps.sem(values), rel=1e-9)


def test_one_value_has_no_interval_and_identical_values_a_point():
    one = mean_ci([0.5])
    assert (one.low, one.high, one.half_width, one.n) == (None, None, None, 1)
    assert str(one) == "0.5000 (n=1)"
    same = mean_ci([0.7, 0.7])
    assert (same.low, same.high, same.half_width) == (0.7, 0.7, 0.0)
    assert mean_ci([0.1, float("nan"), None, 0.3]).n == 2
    with pytest.raises(ValueError):
        mean_ci([])


def test_standard_errors_of_one_runs_examples():
    scores = [0.2, 0.9, 0.4, 0.7, 0.3]
    assert mean_standard_error(scores) == pytest.approx(sps.sem(scores, ddof=1), rel=1e-12)
    assert mean_standard_error(scores) == pytest.approx(np.std(scores, ddof=1) / math.sqrt(5), rel=1e-12)
    correct = [1, 1, 1, 0]  # p = 3/4 over 4 examples
    assert binomial_standard_error(correct) == pytest.approx(math.sqrt(0.75 * 0.25 / 4), rel=1e-12)
    assert mean_standard_error(correct) == pytest.approx(binomial_standard_error(correct) * math.sqrt(4 / 3))
    assert binomial_standard_error([[0, 1, 1, 1]]) == binomial_standard_error(correct)  # one seed as a row


@pytest.mark.parametrize(
    ("call", "scores", "message"),
    [
        (binomial_standard_error, [1, 0.5, 0], "0 or 1"),
        (binomial_standard_error, [[1, 0], [0, 1]], "one run"),
        (mean_standard_error, [0.5], "≥2 examples"),
        (mean_standard_error, [0.5, float("nan")], "NaN"),
        (crossed_mean_ci, np.zeros((2, 2, 2)), "(seeds, examples)"),
        (crossed_mean_ci, [[0.1, 0.2], [0.3, float("inf")]], "NaN or infinite"),
    ],
)
def test_bad_scores_are_refused_in_one_line(call, scores, message):
    with pytest.raises(HarnessError) as err:
        call(scores)
    assert message in str(err.value) and "\n" not in str(err.value)


# y[s, i] for 2 seeds × 3 examples. Hand-worked two-way ANOVA: grand mean 3.5, seed means 2 and 5,
# example means 2, 3, 5.5; MS_seed = 3·(1.5² + 1.5²)/1 = 13.5, MS_example = 2·(1.5² + 0.5² + 2²)/2 = 6.5,
# residuals ±0.5, ±0.5, ∓1 so MS_residual = 3/2 = 1.5.
HAND = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 8.0]])


def test_crossed_variance_against_hand_worked_anova():
    v = crossed_variance(HAND)
    assert v.seed_part == pytest.approx(13.5 / 6)  # also var([2, 5])/2: the seed means' squared error
    assert v.example_part == pytest.approx((6.5 - 1.5) / 6)
    assert v.variance == pytest.approx((13.5 + 6.5 - 1.5) / 6)
    assert (v.n_seeds, v.n_examples) == (2, 3)
    ci = crossed_mean_ci(HAND)
    half = math.sqrt(T_975_DF1**2 * 13.5 / 6 + T_975_DF2**2 * 5 / 6)
    assert ci.mean == 3.5
    assert (ci.low, ci.high) == pytest.approx((3.5 - half, 3.5 + half), rel=1e-9)


def test_seed_part_is_the_seed_means_squared_error_and_a_negative_example_part_is_zero():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 50))
    assert crossed_variance(scores).seed_part == pytest.approx(sps.sem(scores.mean(axis=1)) ** 2, rel=1e-12)
    # every example has the same mean, so MS_example = 0 < MS_residual: no example part
    flat = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    v = crossed_variance(flat)
    assert v.example_part == 0.0 and v.variance == v.seed_part


def test_crossed_interval_of_one_seed_is_the_t_interval_of_its_examples():
    scores = np.array([0.3, 0.8, 0.5, 0.9, 0.1, 0.6])
    ci = crossed_mean_ci(scores, confidence=0.9)
    low, high = sps.t.interval(0.9, len(scores) - 1, loc=scores.mean(), scale=sps.sem(scores))
    assert (ci.low, ci.high) == pytest.approx((low, high), rel=1e-12)
    assert ci.std_error == pytest.approx(sps.sem(scores), rel=1e-12)
    with pytest.raises(HarnessError, match="confidence"):
        crossed_mean_ci(scores, confidence=95)


def test_paired_difference_of_one_seed_is_scipys_paired_t_test():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.1, 1, 40), rng.normal(0, 1, 40)
    result = paired_difference(a, b)
    reference = sps.ttest_rel(a, b)
    assert result.difference == pytest.approx(np.mean(a - b), rel=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-8)
    ref_ci = reference.confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((ref_ci.low, ref_ci.high), rel=1e-12)


def test_paired_difference_of_several_seeds_tests_the_differences_crossed_interval():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.05, 0.3, (3, 80)), rng.normal(0, 0.3, (3, 80))
    result = paired_difference(a, b, ids_a=range(80), ids_b=list(range(80)))
    d = a - b
    v = crossed_variance(d)
    assert result.difference == pytest.approx(d.mean(), rel=1e-12)
    assert result.high - result.difference == pytest.approx(crossed_half_width(v, 0.05), rel=1e-12)
    # the p-value is the level at which the interval's edge reaches zero
    assert crossed_half_width(v, result.p_value) == pytest.approx(abs(d.mean()), rel=1e-8)
    assert paired_difference(b, a).p_value == pytest.approx(result.p_value, rel=1e-12)
    same = paired_difference(a, a)
    assert (same.difference, same.p_value, same.low, same.high) == (0.0, 1.0, 0.0, 0.0)
    shifted = paired_difference(a + 0.25, a)  # the same difference on every example: certain
    assert shifted.difference == pytest.approx(0.25) and shifted.p_value == 0.0


@pytest.mark.parametrize(
    ("a", "b", "kwargs", "message"),
    [
        (np.zeros((2, 5)), np.zeros((2, 4)), {}, "same (seeds, examples)"),
        (np.zeros((2, 5)), np.zeros((3, 5)), {}, "same (seeds, examples)"),
        (np.zeros(3), np.zeros(3), {"ids_a": ["x", "y", "z"], "ids_b": ["x", "q", "z"]}, "column 1: 'y' vs 'q'"),
        (np.zeros(3), np.zeros(3), {"ids_a": ["x", "y"], "ids_b": ["x", "y"]}, "one id a column"),
        (np.zeros(3), np.zeros(3), {"ids_a": ["x", "y", "z"]}, "both methods or of neither"),
        (np.zeros(1), np.zeros(1), {}, "≥2 examples"),
        (np.array([0.1, np.nan]), np.zeros(2), {}, "NaN"),
    ],
)
def test_paired_input_is_refused_in_one_line(a, b, kwargs, message):
    for call in (paired_difference, mcnemar_exact):
        with pytest.raises(HarnessError) as err:
            call(a, b, **kwargs)
        assert message in str(err.value) and "\n" not in str(err.value)


def test_predicted_power_limits():
    one_seed = CrossedVariance(0.01**2, 0.0, 0.01**2, 1, 10**6)
    assert predicted_power(0.0, one_seed) == pytest.approx(0.05, abs=1e-9)
    z = sps.norm.isf(0.025)
    normal = sps.norm.cdf(2.5 - z) + sps.norm.cdf(-2.5 - z)  # δ/σ = 2.5 with many examples
    assert predicted_power(0.025, one_seed) == pytest.approx(normal, abs=1e-4)
    # several seeds but no seed part: nothing random in the half-width, the normal formula with t_{I-1}
    no_seed_part = CrossedVariance(0.01**2, 0.0, 0.01**2, 3, 50)
    q = sps.t.isf(0.025, 49)
    expected = sps.norm.cdf(2.5 - q) + sps.norm.cdf(-2.5 - q)
    assert predicted_power(0.025, no_seed_part) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_against_a_hand_worked_example():
    # 10 discordant examples, 1 won by a and 9 by b, plus 5 both right and 4 both wrong:
    # p = 2·P(X ≤ 1 | X ~ Binomial(10, 1/2)) = 2·(1 + 10)/1024 = 22/1024
    a = np.array([1] + [0] * 9 + [1] * 5 + [0] * 4)
    b = np.array([0] + [1] * 9 + [1] * 5 + [0] * 4)
    result = mcnemar_exact(a, b, ids_a=range(19), ids_b=range(19))
    assert (result.only_a, result.only_b) == (1, 9)
    assert result.p_value == pytest.approx(22 / 1024, rel=1e-12)
    assert result.difference == pytest.approx(-8 / 19)
    assert mcnemar_exact(b, a).p_value == pytest.approx(22 / 1024, rel=1e-12)
    assert mcnemar_exact(a, a).p_value == 1.0  # no discordant pair
    with pytest.raises(HarnessError, match="one seed"):
        mcnemar_exact(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(HarnessError, match="0 or 1"):
        mcnemar_exact([0.5, 1, 0], [1, 1, 0])


def test_holm_against_a_hand_worked_example():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06
    p = [0.01, 0.04, 0.03, 0.005]
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_reject(p, 0.05).tolist() == [True, False, False, True]
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1, then monotone
    assert holm([0.02]) == pytest.approx([0.02])
    for bad in ([], [0.1, float("nan")], [1.2]):
        with pytest.raises(HarnessError):
            holm(bad)


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(9).random(12) ** 3
    reject, adjusted, _, _ = multitest.multipletests(p, alpha=0.05, method="holm")
    assert holm(p) == pytest.approx(adjusted, rel=1e-12)
    assert (holm_reject(p, 0.05) == reject).all()


def test_two_seeds_that_disagree_give_a_finite_p_value():
    """With two seeds the seed part has one degree of freedom, whose t quantile near alpha = 0 is
    astronomically large: the half-width must still be computed without overflow."""
    from harness.results.paired import paired_difference

    rng = np.random.default_rng(3)
    a = rng.integers(0, 2, size=(2, 60)).astype(float)
    b = a.copy()
    b[0, :12] = 1 - b[0, :12]  # the methods disagree on one seed's examples
    result = paired_difference(a, b)
    assert 0.0 <= result.p_value <= 1.0 and math.isfinite(result.low) and math.isfinite(result.high)


def test_equal_seed_means_do_not_make_a_few_flipped_examples_certain():
    """Two methods that differ on three examples per seed, different ones in each seed, with the
    same net -1 in every seed: the seed means agree exactly and the example means nearly cancel, yet
    nine flips out of 831 predictions are no evidence at all (one seed's paired test gives p
    0.57). The seed part cannot be below the noise the residual measures (a seed variance
    component truncated at zero, like the example one), so the interval keeps a width."""
    from harness.results.paired import paired_difference

    a = np.ones((3, 277))
    b = np.ones((3, 277))
    for seed in range(3):
        a[seed, 3 * seed : 3 * seed + 2] = 0.0  # two examples lost
        b[seed, 3 * seed + 2] = 0.0  # one won
    result = paired_difference(a, b)
    assert result.difference == pytest.approx(-1 / 277)
    assert result.p_value > 0.2 and result.low < 0 < result.high
    one_seed = paired_difference(a[:1], b[:1])
    assert one_seed.p_value == pytest.approx(sps.ttest_1samp(a[0] - b[0], 0).pvalue, rel=1e-6)
