"""The suite contract: tasks, loading, preprocessing, official metrics, defaults.

A suite is a subclass of `Suite` registered by name in `SUITES`. It names its tasks,
loads a split through the offline-first resolver, builds the model with the right
head, turns a split into model-ready examples, and computes each task's official
metric with a maintained library.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from harness.errors import HarnessError
from harness.registry import Registry, summary_of
from harness.resolve import DataSource, load_split, locate_split

SUITES: Registry[type["Suite"]] = Registry("suite", package="suites", entry_point_group="harness.suites")


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str  # hub id
    config: str | None
    train_split: str
    # (split, suffix): metrics of the first split keep their names; later ones get the suffix.
    eval_splits: tuple[tuple[str, str], ...]
    primary_metric: str
    summary: str = ""


@dataclass(frozen=True)
class TrainDefaults:
    """Training hyperparameters a suite uses when the user gives none, and their source."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    max_length: int
    warmup_ratio: float
    weight_decay: float
    source: str


@dataclass
class Prepared:
    """A split ready for the training loop: examples plus the collate function."""

    dataset: Any  # indexable, len()-able; items are dicts of tensors/lists
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    references: list[Any]


class Suite:
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    default_model: ClassVar[str] = ""
    task_type: ClassVar[str] = "seq_cls"
    tasks: ClassVar[dict[str, Task]] = {}
    defaults: ClassVar[TrainDefaults]

    @classmethod
    def summary(cls) -> str:
        return summary_of(cls)

    @classmethod
    def get_task(cls, name: str | None) -> Task:
        if name is None:
            if len(cls.tasks) == 1:
                return next(iter(cls.tasks.values()))
            raise HarnessError(f"suite {cls.name!r} has several tasks; pass --task ({', '.join(cls.tasks)})")
        try:
            return cls.tasks[name.lower()]
        except KeyError:
            close = difflib.get_close_matches(name.lower(), list(cls.tasks), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else f"tasks: {', '.join(cls.tasks)}"
            raise HarnessError(f"unknown task {name!r} in suite {cls.name!r}; {hint} (see `harness list tasks`)") from None

    # Data ------------------------------------------------------------------
    def locate(self, task: Task, data_dir) -> dict[str, DataSource]:
        """Every split the job needs, found before any work starts."""
        splits = [task.train_split] + [split for split, _ in task.eval_splits]
        return {split: locate_split(task.dataset, task.config, split, data_dir) for split in splits}

    def load(self, source: DataSource):
        return load_split(source)

    # Model and examples (suite-specific) -----------------------------------
    def build_model(self, location: str, task: Task, train_dataset) -> tuple[torch.nn.Module, Any]:
        raise NotImplementedError

    def head_modules(self, model: torch.nn.Module) -> tuple[str, ...]:
        return ()

    def prepare(self, dataset, processor, task: Task, max_length: int) -> Prepared:
        raise NotImplementedError

    def predictions(self, outputs, task: Task) -> list[Any]:
        raise NotImplementedError

    def compute_metrics(self, task: Task, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        raise NotImplementedError
