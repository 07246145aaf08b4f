"""The `tune:` block of a sweep file: an equal tuning budget for every method of the grid.

    grid:                              # every job of the grid is one tuning group
      suite: glue
      task: sst2
      model: minilm-l6
      method: [lora, dora, ia3, vera, bitfit, full]
    defaults: {max_train_samples: 2000}
    tune:
      trials: 5                        # per group, the same for every method
      seeds: [0, 1, 2]                 # the picked configuration's final runs
      selection_samples: 1000          # optional: held out of the training split (default: a rule)
      head_lr: 0.004                   # the task head's rate, the same for every method
      space:                           # optional: a method's own parameters, beside the rate
        lora: {r: [4, 8, 16]}

A group's search space is a log grid of learning rates around the method's default (`trials`
points, a factor sqrt(10) apart) times the values its `space` lists; a space of more points than
`trials` is sampled down to `trials` with a fixed seed (random search), so every group gets the
same number of trials whatever its space. A space of fewer points is refused: the budget would
not be equal.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from harness.spec.numbers import Number, Seed

# A half-decade grid: neighbouring rates a factor sqrt(10) apart, the spacing of the 1e-4, 3e-4,
# 1e-3 grids the PEFT papers' appendices search (LoRA, Hu et al. 2022, Appendix D; VeRA, Kopiczko
# et al. 2024, Appendix A), centred on the method's default so that the default is a trial.
LR_STEP = math.sqrt(10.0)

# The task head's rate under tuning, the same for every method: VeRA trains its classification
# head apart from the adapted parameters, at 4e-3 for RoBERTa-base on SST-2 (Kopiczko et al.,
# ICLR 2024, Table 8).
DEFAULT_HEAD_LR = 4e-3

# The default number of trials: the five points of a half-decade grid, two decades wide.
DEFAULT_TRIALS = 5

# The final runs of a picked configuration: three seeds, the fewest for which a t-interval over
# seeds has a finite width worth printing (2 degrees of freedom).
DEFAULT_SEEDS = (0, 1, 2)

# What a trial must not set: tuning sets them itself.
SET_BY_TUNING = ("lr", "seed", "evaluate_on", "selection_samples", "tuning_group", "tuned", "head_lr")


class TuneBlock(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    trials: StrictInt = Field(DEFAULT_TRIALS, gt=0, description="trials per tuning group, the same for every method")
    seeds: list[Seed] = Field(list(DEFAULT_SEEDS), min_length=1, description="seeds of the picked configuration's runs")
    trial_seed: Seed = Field(0, description="the seed every trial trains with")
    selection_samples: StrictInt | None = Field(
        None, gt=0, description="examples held out of the training split (default: harness/spec/subsets.selection_rule)"
    )
    head_lr: Number = Field(DEFAULT_HEAD_LR, gt=0, description="the task head's learning rate, for every method")
    space: dict[str, dict[str, list[Any]]] = Field(
        {}, description="per method (as the grid names it): parameter -> values to search; `lr` replaces the grid"
    )


def lr_grid(default: float, trials: int) -> list[float]:
    """`trials` rates a factor LR_STEP apart with `default` in the middle (the lower middle for an
    even count), rounded to 3 significant digits so that a rate reads as it is written."""
    low = -((trials - 1) // 2)
    return [float(f"{default * LR_STEP**k:.3g}") for k in range(low, low + trials)]


def search_points(default_lr: float, trials: int, space: dict[str, list[Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The trial points of one group: {"lr": ..., parameter: ...} each, `trials` of them (see the
    module doc). Raises ValueError naming the problem (the caller says where)."""
    axes = dict(space)
    for name, values in axes.items():
        if not values:
            raise ValueError(f"{name}: an empty list leaves nothing to search")
    if "lr" not in axes:
        if default_lr <= 0:
            raise ValueError("the method trains nothing (its rate is 0): there is no learning rate to tune")
        axes["lr"] = lr_grid(default_lr, trials)
    names = ["lr", *sorted(k for k in axes if k != "lr")]
    points = [dict(zip(names, combo)) for combo in itertools.product(*(axes[n] for n in names))]
    if len(points) < trials:
        raise ValueError(
            f"the search space has {len(points)} points, fewer than the {trials} trials every method gets: "
            "list more values or lower trials"
        )
    if len(points) > trials:
        # Random search over the product (Bergstra and Bengio, JMLR 2012), drawn with a fixed seed.
        chosen = sorted(random.Random(seed).sample(range(len(points)), trials))
        points = [points[i] for i in chosen]
    return points


def group_id(base: dict[str, Any], points: list[dict[str, Any]], selection: int | None, block: TuneBlock) -> str:
    """A tuning group's id: the same base job, search points, selection split, head rate and trial
    seed give the same id, so running the same file again resumes the group; the final seeds are
    not part of it (adding a seed extends the group)."""
    canonical = {
        "base": base,
        "points": points,
        "selection_samples": selection,
        "head_lr": block.head_lr,
        "trial_seed": block.trial_seed,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
