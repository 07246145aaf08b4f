"""Official task metrics, computed by maintained libraries (scikit-learn, scipy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(predictions: Sequence, references: Sequence) -> float:
    return float(skm.accuracy_score(references, predictions))


def f1(predictions: Sequence, references: Sequence) -> float:
    """F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    return float(skm.f1_score(references, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews_corr(predictions: Sequence, references: Sequence) -> float:
    return float(skm.matthews_corrcoef(references, predictions))


def pearson(predictions: Sequence, references: Sequence) -> float:
    if np.std(predictions) == 0 or np.std(references) == 0:
        return float("nan")  # undefined for a constant input; scipy would warn and return nan
    return float(stats.pearsonr(np.asarray(predictions, float), np.asarray(references, float)).statistic)


def spearman(predictions: Sequence, references: Sequence) -> float:
    if np.std(predictions) == 0 or np.std(references) == 0:
        return float("nan")
    return float(stats.spearmanr(np.asarray(predictions, float), np.asarray(references, float)).statistic)


def top_k_accuracy(scores: Sequence, references: Sequence, k: int) -> float:
    """Share of examples whose label is among the k highest scores; `scores` is (n, classes)."""
    scores = np.asarray(scores)  # an array stays as it is (float32 logits are not copied to float64)
    if k == 1:  # plain argmax accuracy (top_k_accuracy_score wants 1-d scores for two classes)
        return float(skm.accuracy_score(references, scores.argmax(-1)))
    return float(skm.top_k_accuracy_score(references, scores, k=k, labels=np.arange(scores.shape[1])))


METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_corr": matthews_corr,
    "pearson": pearson,
    "spearman": spearman,
}
