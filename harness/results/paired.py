"""Two methods scored on the same examples and seeds: is the difference real, and how large is it?

Each method's per-example scores come as an array shaped (seeds, examples), aligned by example
id by the caller (row s of both is seed s; column i of both is example i). Pairing removes
what the methods share, chiefly how hard each example is, so the test sees only their
difference d[s, i] = a[s, i] − b[s, i].

`paired_difference` tests the grand mean of d with the crossed seeds × examples variance and
interval of `stats.crossed_variance` and `stats.crossed_half_width`: it counts both the seeds'
training randomness and the evaluation set's sampling. Resampling tests were not used for it:
with the two to five seeds a report has, a bootstrap over seeds cannot reach its nominal level
(see `stats`), and sign flips of examples ignore seed variation altogether. With one seed it is exactly the paired t-test
over examples (scipy.stats.ttest_rel). `mcnemar_exact` is the exact test for one seed of 0/1
accuracy, and `holm` corrects the p-values of one method compared with many.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps
from scipy.integrate import quad

from harness.core.errors import HarnessError
from harness.results.stats import (
    CrossedVariance,
    check_confidence,
    crossed_half_width,
    crossed_p_value,
    crossed_variance,
    score_matrix,
)


def paired_matrices(
    a, b, ids_a: Sequence | None = None, ids_b: Sequence | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Both methods' (seeds, examples) scores, refused unless they are the same examples and seeds."""
    if (ids_a is None) != (ids_b is None):
        raise HarnessError("give the example ids of both methods or of neither")
    left, right = score_matrix(a, "first method's scores"), score_matrix(b, "second method's scores")
    if left.shape != right.shape:
        raise HarnessError(f"scores shaped {left.shape} and {right.shape}; both need the same (seeds, examples)")
    if ids_a is not None:
        ids_a, ids_b = list(ids_a), list(ids_b)
        if len(ids_a) != left.shape[1] or len(ids_b) != left.shape[1]:
            raise HarnessError(
                f"{len(ids_a)} and {len(ids_b)} example ids for {left.shape[1]} examples; one id a column"
            )
        if ids_a != ids_b:
            where = next(i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y)
            raise HarnessError(
                f"the runs scored different examples (column {where}: {ids_a[where]!r} vs {ids_b[where]!r})"
            )
    return left, right


@dataclass(frozen=True)
class PairedComparison:
    """Mean of a − b with its interval and two-sided p-value for a difference of zero."""

    difference: float
    low: float
    high: float
    p_value: float
    variance: CrossedVariance
    confidence: float = 0.95

    @property
    def std_error(self) -> float:
        return math.sqrt(self.variance.variance)


def paired_difference(
    a, b, *, ids_a: Sequence | None = None, ids_b: Sequence | None = None, confidence: float = 0.95
) -> PairedComparison:
    """Paired test of two methods' (seeds, examples) scores, counting seed and example variation."""
    check_confidence(confidence)
    left, right = paired_matrices(a, b, ids_a, ids_b)
    d = left - right
    variance = crossed_variance(d)
    difference = float(d.mean())
    half = crossed_half_width(variance, 1 - confidence)
    p_value = crossed_p_value(difference, variance)
    return PairedComparison(difference, difference - half, difference + half, p_value, variance, confidence)


def predicted_power(difference: float, variance: CrossedVariance, alpha: float = 0.05) -> float:
    """Chance that `paired_difference` rejects at level alpha, given the true difference and variances.

    `variance` holds the true parts (seed_part = σb²/S + σe²/(S·I), example_part = σa²/I). Under
    the normal crossed model of `stats.crossed_variance` the estimated seed part is
    seed_part·W with W ~ χ²_{S−1}/(S−1), independent of the mean, and the example part, estimated
    from many examples, is taken as known. The test rejects when |d̄| > h(W) = √(t²·seed_part·W +
    q²·example_part), so the power is E_W[Φ((δ − h)/σ) + Φ((−δ − h)/σ)], σ² = seed_part +
    example_part, integrated over W's quantiles. With one seed it is the paired t-test, whose
    statistic is noncentral t with I − 1 degrees of freedom: that power is exact.
    """
    if not 0 < alpha < 1:
        raise HarnessError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    scale = math.sqrt(variance.variance)
    example_q = float(sps.t.isf(alpha / 2, variance.n_examples - 1))
    if variance.n_seeds == 1:
        df, ncp = variance.n_examples - 1, difference / scale
        return float(sps.nct.sf(example_q, df, ncp) + sps.nct.cdf(-example_q, df, ncp))
    k = variance.n_seeds - 1
    seed_q = float(sps.t.isf(alpha / 2, k))

    def rejection(u: float) -> float:
        w = float(sps.chi2.ppf(u, k)) / k
        half = math.sqrt(seed_q**2 * variance.seed_part * w + example_q**2 * variance.example_part)
        return float(sps.norm.sf((half - difference) / scale) + sps.norm.cdf((-half - difference) / scale))

    return float(quad(rejection, 0.0, 1.0, limit=200)[0])


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: of the examples the methods disagree on, how many each got right."""

    only_a: int
    only_b: int
    difference: float
    p_value: float


def mcnemar_exact(a, b, *, ids_a: Sequence | None = None, ids_b: Sequence | None = None) -> McNemar:
    """McNemar's exact test for one seed of 0/1 scores: a two-sided binomial test of the discordant pairs.

    Under no difference, each example only one method gets right is equally likely to favour
    either, so only_a ~ Binomial(only_a + only_b, 1/2) (McNemar 1947, Psychometrika 12:153).
    """
    left, right = paired_matrices(a, b, ids_a, ids_b)
    if left.shape[0] != 1:
        raise HarnessError(f"McNemar's test takes one seed, got {left.shape[0]}; use paired_difference for several")
    if not (np.isin(left, (0.0, 1.0)).all() and np.isin(right, (0.0, 1.0)).all()):
        raise HarnessError("McNemar's test needs scores of 0 or 1; use paired_difference for graded scores")
    only_a = int(((left == 1) & (right == 0)).sum())
    only_b = int(((left == 0) & (right == 1)).sum())
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(sps.binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(only_a, only_b, (only_a - only_b) / left.shape[1], p_value)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the given order (Holm 1979, Scand. J. Stat. 6:65).

    Sorted ascending, the j-th of m p-values becomes max over k ≤ j of min(1, (m − k + 1)·p_(k));
    rejecting where the adjusted value is ≤ α controls the family-wise error rate at α under any
    dependence. Written here because scipy has only Benjamini-Hochberg (false_discovery_control),
    which controls the false discovery rate instead.
    """
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or len(p) == 0:
        raise HarnessError("holm needs a non-empty list of p-values")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise HarnessError("holm needs p-values between 0 and 1, with no NaN")
    m = len(p)
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = stepped
    return adjusted


def holm_reject(p_values: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Which hypotheses Holm's procedure rejects at family-wise level alpha."""
    if not 0 < alpha < 1:
        raise HarnessError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    return holm(p_values) <= alpha
