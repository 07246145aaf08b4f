"""The spread of repeated measurements: a mean with a bootstrap confidence interval.

scipy.stats.bootstrap does the resampling (percentile method, seeded, so a report is
reproducible); with one value there is no interval, and with identical values it is a point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class MeanCI:
    mean: float
    low: float | None
    high: float | None
    n: int
    confidence: float = 0.95

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.mean:.4f}"
        return f"{self.mean:.4f} ± {(self.high - self.low) / 2:.4f}"


def mean_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> MeanCI:
    data = np.asarray([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    if len(data) == 0:
        raise ValueError("mean_ci of no values")
    mean = float(data.mean())
    if len(data) < 2:
        return MeanCI(mean, None, None, len(data), confidence)
    if np.all(data == data[0]):
        return MeanCI(mean, mean, mean, len(data), confidence)
    from scipy.stats import bootstrap

    result = bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=resamples, method="percentile",
                       random_state=np.random.default_rng(seed))
    ci = result.confidence_interval
    return MeanCI(mean, float(ci.low), float(ci.high), len(data), confidence)
