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


def selection_rule(train_examples: int) -> int:
    """The size of the selection split carved when none is asked for: a fifth of the training split,
    as VTAB-1k holds out 200 of its 1000 (Zhai et al. 2019), at most SELECTION_CAP examples."""
    return max(1, min(SELECTION_CAP, train_examples // 5))


# At most this many held-out examples: at 1000 the sampling standard error of an accuracy near 0.85
# is about 1.1 points, below the differences a tuning grid chooses between, and scoring a trial on
# more costs each trial more evaluation time.
SELECTION_CAP = 1000


def training_and_selection(dataset, max_train: int | None, selection: int):
    """The training subset and the selection split of a training split, disjoint: the split shuffled
    with DATA_SEED (the permutation `fixed_subset` takes its subset from), the selection split its
    last `selection` examples, the training subset the first `max_train` of the rest. So the
    selection examples are the same for every method, seed and training size, and a training subset
    that fits beside them is the very subset `fixed_subset` draws without a selection split."""
    total = len(dataset)
    check_selection_fits(total, max_train, selection)
    shuffled = dataset.shuffle(seed=DATA_SEED)
    pool = total - selection
    return shuffled.select(range(max_train or pool)), shuffled.select(range(pool, total))


def check_selection_fits(total: int, max_train: int | None, selection: int) -> None:
    """A selection split and a training subset that the training split's `total` examples hold
    side by side; else one line saying which to lower."""
    from harness.core.errors import HarnessError

    if selection >= total:
        raise HarnessError(
            f"a selection split of {selection} examples leaves nothing to train on: the training split has "
            f"{total}; pass a smaller --selection-samples"
        )
    if max_train is not None and max_train + selection > total:
        raise HarnessError(
            f"--max-train-samples {max_train} and --selection-samples {selection} need {max_train + selection} "
            f"examples; the training split has {total}: lower one of them"
        )
