"""The spread of repeated measurements: over seeds, over evaluation examples, and both.

Runs of one configuration differ by seed, and a report has two to five of them. At those
counts a percentile bootstrap cannot reach its nominal coverage (simulated: 52% at n=2, 73%
at n=3 for a nominal 95%), while the t-interval mean ± t_{1-α/2, n-1}·s/√n holds it for
normally distributed seed noise (Student, 1908). With one value there is no interval; with
identical values it is a point. `mean_ci` covers seed-to-seed variation only, not the
sampling noise of the evaluation set (the same examples score every seed).

The evaluation set is itself a sample of examples. `mean_standard_error` and
`binomial_standard_error` give that sampling error for one run's per-example scores, and
`crossed_mean_ci` gives an interval for a (seeds, examples) score matrix that counts both
sources at once (see `crossed_variance` for the model and formula).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as sps
from scipy.optimize import brentq
from scipy.special import stdtrit

from harness.core.errors import HarnessError


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float | None
    high: float | None
    n: int
    confidence: float = 0.95

    @property
    def half_width(self) -> float | None:
        """Half the (symmetric) interval; None with a single value."""
        return None if self.low is None else (self.high - self.low) / 2

    @property
    def std_error(self) -> float | None:
        """s/√n of the values; None with a single value."""
        if self.low is None:
            return None
        return self.half_width / _t_quantile(self.confidence, self.n) if self.half_width else 0.0

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.mean:.4f} (n={self.n})"
        return f"{self.mean:.4f} ± {self.half_width:.4f} (n={self.n})"


def _t_quantile(confidence: float, n: int) -> float:
    return float(sps.t.ppf(0.5 + confidence / 2, n - 1))


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> MeanCI:
    """Mean and t-interval of the values that are not None or NaN."""
    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(data) == 0:
        raise ValueError("mean_ci of no values")
    mean = float(data.mean())
    if len(data) < 2:
        return MeanCI(mean, None, None, len(data), confidence)
    half = _t_quantile(confidence, len(data)) * float(data.std(ddof=1)) / math.sqrt(len(data))
    return MeanCI(mean, mean - half, mean + half, len(data), confidence)


# --- the evaluation set's own sampling error -------------------------------------------------


def score_matrix(scores, what: str = "scores") -> np.ndarray:
    """Per-example scores as a float array shaped (seeds, examples); one run's 1-D scores are one seed.

    Refuses what no statistic here can use: more than two axes, fewer than two examples, no
    seeds, NaN or infinite scores.
    """
    array = np.asarray(scores, dtype=float)
    if array.ndim == 1:
        array = array[np.newaxis, :]
    if array.ndim != 2:
        raise HarnessError(f"{what} must be shaped (seeds, examples), got {array.ndim} axes; pass one row per seed")
    if array.shape[0] < 1 or array.shape[1] < 2:
        raise HarnessError(f"{what} has {array.shape[1]} example(s) and {array.shape[0]} seed(s); need ≥2 examples")
    if not np.isfinite(array).all():
        raise HarnessError(f"{what} has NaN or infinite scores; score every example before comparing")
    return array


def mean_standard_error(scores) -> float:
    """Standard error of the mean of one run's per-example scores: s/√n with s the ddof=1 deviation."""
    return float(sps.sem(_one_row(scores), ddof=1))


def binomial_standard_error(correct) -> float:
    """Standard error √(p(1-p)/n) of an accuracy p over n examples scored 0 or 1 (the binomial one).

    It is the plug-in (maximum-likelihood) estimate; `mean_standard_error` of the same 0/1 scores is
    larger by √(n/(n-1)), the ddof=1 correction.
    """
    row = _one_row(correct)
    if not np.isin(row, (0.0, 1.0)).all():
        raise HarnessError("binomial_standard_error needs scores of 0 or 1; use mean_standard_error for graded scores")
    p = float(row.mean())
    return math.sqrt(p * (1 - p) / len(row))


def _one_row(scores) -> np.ndarray:
    matrix = score_matrix(scores)
    if matrix.shape[0] != 1:
        raise HarnessError(f"expected one run's scores, got {matrix.shape[0]} seeds; use crossed_mean_ci for several")
    return matrix[0]


# --- seeds and examples together -------------------------------------------------------------


@dataclass(frozen=True)
class CrossedVariance:
    """The estimated variance of a (seeds, examples) matrix's grand mean, split in two.

    `seed_part` is what resampling seeds would show, the squared standard error of the seed means
    (σb²/S + σe²/(S·I)), zero with one seed, where it cannot be estimated; `example_part` what
    resampling examples adds (σa²/I; with one seed, s²/I of the examples). `variance` is their sum.
    """

    variance: float
    seed_part: float
    example_part: float
    n_seeds: int
    n_examples: int


def crossed_variance(matrix: np.ndarray) -> CrossedVariance:
    """Estimated variance of the grand mean of scores y[s, i] with seeds crossed with examples.

    Model: y[s, i] = μ + a_i + b_s + e_si, with independent example effects a (variance σa²), seed
    effects b (σb²) and interaction/noise e (σe²). The grand mean of S seeds by I examples has
        Var(ȳ) = σa²/I + σb²/S + σe²/(S·I)
    (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat. 1:386), and with the two-way ANOVA
    mean squares MS_seed, MS_example, MS_residual of the matrix,
        E[MS_seed] = σe² + I·σb²,  E[MS_example] = σe² + S·σa²,  E[MS_residual] = σe²
    (Searle, Casella & McCulloch 1992, Variance Components: balanced two-way crossed classification),
    so seed_part = MS_seed/(S·I), the squared standard error of the S seed means, estimates
    σb²/S + σe²/(S·I), and example_part = (MS_example − MS_residual)/(S·I) estimates σa²/I; their
    sum (MS_seed + MS_example − MS_residual)/(S·I) is unbiased for Var(ȳ). The example part is
    truncated at zero when sampling makes it negative, the usual treatment of a negative
    component estimate. The noise σe² stays with the seed part: the seed means measure it without
    assuming it independent across examples (a better seed typically helps the same examples). With one seed no seed effect can be estimated:
    the variance is s²/I of the examples, which conditions on the one trained model.
    """
    seeds, examples = matrix.shape
    if seeds == 1:
        return CrossedVariance(
            float(matrix[0].var(ddof=1)) / examples, 0.0, float(matrix[0].var(ddof=1)) / examples, 1, examples
        )
    grand = matrix.mean()
    seed_means = matrix.mean(axis=1, keepdims=True)
    example_means = matrix.mean(axis=0, keepdims=True)
    ms_seed = examples * float(((seed_means - grand) ** 2).sum()) / (seeds - 1)
    ms_example = seeds * float(((example_means - grand) ** 2).sum()) / (examples - 1)
    ms_residual = float(((matrix - seed_means - example_means + grand) ** 2).sum()) / ((seeds - 1) * (examples - 1))
    cells = seeds * examples
    # Seed means that agree exactly (discrete scores: every seed nets the same few flips) measure no
    # noise, though the residual shows plenty: then the seed part is the residual's σe²/(S·I), its
    # value with σb² at zero, not zero. (Flooring it so always would make the test conservative:
    # MS_seed < MS_residual about half the time under no difference.)
    # (Residuals of float rounding alone, a constant difference, are no noise: relative to the scores.)
    noise = ms_residual > 1e-12 * float((matrix**2).mean())
    seed_part = (ms_residual if ms_seed <= ms_residual * 1e-12 and noise else ms_seed) / cells
    example_part = max(ms_example - ms_residual, 0.0) / cells
    return CrossedVariance(seed_part + example_part, seed_part, example_part, seeds, examples)


def t_upper(tail: float, df: float) -> float:
    """The t quantile with `tail` probability above it, exact far into the tail (stdtrit of the lower tail)."""
    return -float(stdtrit(df, tail))


def crossed_half_width(variance: CrossedVariance, alpha: float) -> float:
    """Half-width of the two-sided 1 − alpha interval: √(t²_{S−1}·seed_part + t²_{I−1}·example_part).

    Each part is scaled by the quantile of its own degrees of freedom (S − 1 seeds, I − 1 examples)
    and the two are added in quadrature: when either part vanishes it is the exact t-interval of the
    other (with one seed, the paired t-interval over examples; with no example part, the t-interval
    of the seed means). When both matter it errs wide: simulated coverage of a nominal 95% was
    95-99% (99% at two seeds with the parts equal). A single Welch-Satterthwaite t (Satterthwaite
    1946, Biometrics Bull. 2:110) was rejected: its degrees of freedom, estimated from the same
    data, rise when the seed part happens to come out small, and at 2-3 seeds with the seed part
    dominant it covered 88-92%. Splitting off the residual as known noise was rejected too: a seed
    that helps some examples more than others inflates the residual, and equal methods were then
    declared different in 8-9% of simulated 0/1 comparisons at the 5% level.
    """
    seed_q = t_upper(alpha / 2, variance.n_seeds - 1) if variance.seed_part else 0.0
    example_q = t_upper(alpha / 2, variance.n_examples - 1)
    # hypot: with one degree of freedom the quantile near alpha = 0 squares past the float range.
    return math.hypot(seed_q * math.sqrt(variance.seed_part), example_q * math.sqrt(variance.example_part))


def crossed_p_value(estimate: float, variance: CrossedVariance) -> float:
    """Two-sided p-value for a true value of zero: the alpha at which the interval's edge reaches zero."""
    if variance.variance == 0:  # every value identical: no doubt either way
        return 1.0 if estimate == 0 else 0.0
    if estimate == 0:
        return 1.0

    def gap(log_alpha: float) -> float:
        return crossed_half_width(variance, math.exp(log_alpha)) - abs(estimate)

    floor = math.log(1e-300)
    if gap(floor) <= 0:
        return 0.0
    return math.exp(brentq(gap, floor, 0.0, xtol=1e-12, rtol=1e-12))


@dataclass(frozen=True)
class CrossedCI:
    """A grand mean over seeds and examples with an interval that counts both sources of variation."""

    mean: float
    low: float
    high: float
    variance: CrossedVariance
    confidence: float = 0.95

    @property
    def std_error(self) -> float:
        return math.sqrt(self.variance.variance)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


def check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise HarnessError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def crossed_mean_ci(scores, confidence: float = 0.95) -> CrossedCI:
    """Grand mean of per-example scores shaped (seeds, examples) with the `crossed_half_width` interval."""
    check_confidence(confidence)
    matrix = score_matrix(scores)
    variance = crossed_variance(matrix)
    mean = float(matrix.mean())
    half = crossed_half_width(variance, 1 - confidence)
    return CrossedCI(mean, mean - half, mean + half, variance, confidence)
