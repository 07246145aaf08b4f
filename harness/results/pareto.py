"""Pareto fronts of quality against cost.

Written here because it is a dozen lines: a run is Pareto-optimal when no other run
is at least as good on both axes and strictly better on one (better score, lower cost).
A better score is a higher one, or a lower one for a lower-is-better metric (a perplexity).
"""

from __future__ import annotations

import numpy as np


def pareto_mask(costs, scores, higher_is_better: bool = True) -> np.ndarray:
    """Boolean mask of the Pareto-optimal points (minimise cost; maximise the score, or
    minimise it when not `higher_is_better`). One front compares one metric, so one direction.

    Points with a NaN cost or score are never optimal. Exact duplicates of an optimal
    point are optimal too (neither dominates the other).
    """
    costs = np.asarray(costs, dtype=float)
    scores = np.asarray(scores, dtype=float)
    if not higher_is_better:
        scores = -scores  # the same front over the score's goodness
    mask = np.zeros(len(costs), dtype=bool)
    valid = np.flatnonzero(~(np.isnan(costs) | np.isnan(scores)))
    # Cheapest first; among equal costs the best score first.
    order = valid[np.lexsort((-scores[valid], costs[valid]))]
    best = -np.inf
    last = (np.nan, np.nan)
    for i in order:
        if scores[i] > best:
            mask[i] = True
            best = scores[i]
            last = (costs[i], scores[i])
        elif costs[i] == last[0] and scores[i] == last[1]:
            mask[i] = True
    return mask
