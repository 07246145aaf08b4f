"""The fixed subsets a comparison trains and evaluates on.

Subsets of a split are drawn with DATA_SEED, not the run's seed, so that every method and
every seed of a comparison sees the same examples.
"""

from __future__ import annotations

DATA_SEED = 0


def fixed_subset(dataset, max_samples: int | None):
    """The first `max_samples` of the split shuffled with DATA_SEED: the same examples for every
    method and every run seed of a comparison. Shuffled, not the split's first rows, because
    some splits are sorted by class (Imagenette's validation set starts with 392 tenches)."""
    if max_samples and max_samples < len(dataset):
        return dataset.shuffle(seed=DATA_SEED).select(range(max_samples))
    return dataset
