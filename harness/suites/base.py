"""The suite contract: tasks, loading, preprocessing, official metrics, defaults.

A suite is a subclass of `Suite` registered by name in `SUITES`. It names its tasks,
loads a split through the offline-first resolver, builds the model with the right
head, turns a split into model-ready examples, and computes each task's official
metric with a maintained library.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch

from harness.core.errors import HarnessError, first_line
from harness.core.registry import Registry, summary_of
from harness.data.models import MODELS, ModelAlias
from harness.data.resolve import DataSource, check_files, load_split, locate_split
from harness.spec.options import SUITE_OPTIONS, SuiteOptions
from harness.spec.subsets import DATA_SEED, fixed_subset, training_and_selection

if TYPE_CHECKING:
    from harness.spec.run import ResolvedRun, RunSpec


class _SuiteRegistry(Registry):
    """The suites' registry: registering a suite also registers it where the run spec, below the
    suites, finds each suite's Options to check a run's suite options."""

    def register(self, name: str):
        register_suite = super().register(name)

        def decorator(cls):
            register_suite(cls)
            SUITE_OPTIONS.register(name)(cls)
            return cls

        return decorator


SUITES: Registry[type["Suite"]] = _SuiteRegistry(
    "suite", package="harness.suites", entry_point_group="harness.suites", name_attribute="name"
)

# Models that number positions from padding_idx + 1 (transformers' create_position_ids_from_input_ids):
# RoBERTa's 514 position embeddings hold 512 tokens.
PADDING_OFFSET_POSITIONS = (
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "roberta-prelayernorm",
    "data2vec-text",
    "longformer",
    "mpnet",
    "ibert",
)


def text_positions(config) -> int | None:
    """How many tokens a text model can embed (None when its config does not say)."""
    positions = getattr(config, "max_position_embeddings", None)
    if not isinstance(positions, int) or isinstance(positions, bool):
        return None
    if getattr(config, "model_type", None) in PADDING_OFFSET_POSITIONS:
        positions -= (getattr(config, "pad_token_id", None) or 0) + 1
    return positions


# Positional example ids of a split that has no id column of its own: the row number in the split
# as stored, attached on loading, before any subset is drawn, so that every subset keeps them.
EXAMPLE_ID = "_example_id"

# Row metrics that are a mean of per-example scores (the score of one example under each); any
# other (Matthews correlation, Pearson, F1) is corpus-level, and an example has no score under it.
EXAMPLE_SCORES: dict[str, Callable[[float, float], float]] = {
    "accuracy": lambda prediction, reference: float(prediction == reference),
}


def with_example_ids(dataset, own: str | None):
    """The split with its examples' ids: its own id column where it has one, else the row numbers
    (a column of int64 beside the stored table: nothing is copied)."""
    import numpy as np

    if (own and own in dataset.column_names) or EXAMPLE_ID in dataset.column_names:
        return dataset
    return dataset.add_column(EXAMPLE_ID, np.arange(len(dataset), dtype=np.int64))


def example_ids(dataset, own: str | None) -> list[int]:
    """The ids `with_example_ids` attached (or the data's own), in the dataset's order."""
    column = own if own and own in dataset.column_names else EXAMPLE_ID
    return [int(i) for i in dataset[column]]


def row_count(source: DataSource) -> int | None:
    """Rows of a located split from its Parquet footers (nothing decoded); None for a split that
    comes from the hub (its size is known once loaded). An unreadable file is one line (check_files)."""
    import pyarrow.parquet as pq

    if not source.files:
        return None
    check_files(source)
    return sum(pq.ParquetFile(f).metadata.num_rows for f in source.files)


def check_labels(where: str, dataset, column: str, classes: int | None) -> None:
    """Every example labelled; class labels integers in 0..classes-1, real labels finite. Reads
    the label column alone (Arrow), never the inputs."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    values = dataset.with_format("arrow")[column]
    values = values.column(0) if isinstance(values, pa.Table) else values
    missing = values.null_count
    if pa.types.is_floating(values.type):
        missing += int(pc.sum(pc.is_nan(values.fill_null(0.0))).as_py() or 0)
    if missing:
        raise HarnessError(f"{where}: {missing} of {len(values)} examples have no label (column {column!r})")
    if classes is None:
        return
    if not (pa.types.is_integer(values.type) or pa.types.is_dictionary(values.type)):
        raise HarnessError(
            f"{where}: labels of column {column!r} are {values.type}, not class numbers 0..{classes - 1}"
        )
    numbers = np.asarray(values.to_numpy(zero_copy_only=False) if hasattr(values, "to_numpy") else values)
    outside = numbers[(numbers < 0) | (numbers >= classes)]
    if outside.size:
        raise HarnessError(f"{where}: label {int(outside[0])} is outside 0..{classes - 1} ({classes} classes)")


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
    lr_scheduler: str = "linear"


@dataclass(frozen=True)
class Preset:
    """A published setup by name: the model, method and settings a command line would spell out.

    Flags the user gives still win; `source` says where the numbers come from."""

    name: str
    source: str
    settings: dict[str, Any]  # run option or suite option -> value

    def fill(self, spec: "RunSpec") -> "RunSpec":
        return spec.under(self.settings)


@dataclass
class Evaluation:
    """What evaluating the final model gave: metrics, time, and what the inference meters use."""

    metrics: dict[str, float]
    seconds: float
    splits: list[str]
    samples: int  # examples evaluated (first split)
    data: "Prepared"  # model-ready examples of the first split: the latency inputs
    row: dict[str, Any] = field(default_factory=dict)  # suite-specific result columns
    # One record per evaluated example, every split (harness/spec/schema.py PREDICTION_COLUMNS).
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Prepared:
    """A split ready for the training loop: examples plus the collate function."""

    dataset: Any  # indexable, len()-able; items are dicts of tensors/lists
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    references: list[Any]
    # Labels per token (-100 where no loss): the loss of an accumulated step is normalised by
    # the scored tokens of all its micro-batches, not averaged per micro-batch.
    token_labels: bool = False


class Suite:
    name: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    default_model: ClassVar[str] = ""
    task_type: ClassVar[str] = "seq_cls"
    tasks: ClassVar[dict[str, Task]] = {}
    defaults: ClassVar[TrainDefaults]
    presets: ClassVar[dict[str, Preset]] = {}
    # Options only this suite reads, given like run options (`--set key=value`, `--key value`, a
    # sweep file's key); any other key is refused naming these.
    Options: ClassVar[type[SuiteOptions]] = SuiteOptions
    # Short names of the models the suite uses (`--model NAME` in any suite), collected in MODELS.
    model_aliases: ClassVar[dict[str, ModelAlias]] = {}
    # What evaluates the suite's models (harness/evaluation/base.py KINDS): "forward" scores batches,
    # "generate" runs lm-eval tasks. The job picks a backend of this kind.
    eval_kind: ClassVar[str] = "forward"
    # The data's own column of example ids (GLUE's idx); without one, examples are numbered by row.
    id_column: ClassVar[str | None] = None
    # The training split is prepared when first used (a run that neither trains nor calibrates never
    # prepares it): for a suite whose preparing is slow and checks nothing that must come first.
    prepares_on_use: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for alias, model in vars(cls).get("model_aliases", {}).items():  # its own, not a parent's
            MODELS.register(alias)(model)

    @classmethod
    def get_preset(cls, name: str | None) -> Preset | None:
        if name is None:
            return None
        if name in cls.presets:
            return cls.presets[name]
        known = ", ".join(cls.presets) or "none"
        raise HarnessError(f"unknown preset {name!r} for suite {cls.name!r}; presets: {known}")

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
            raise HarnessError(
                f"unknown task {name!r} in suite {cls.name!r}; {hint} (see `harness list tasks`)"
            ) from None

    # Data ------------------------------------------------------------------
    def locate(self, task: Task, data_dir, train_data: str | None = None) -> dict[str, DataSource]:
        """Every split the job needs, found before any work starts. `train_data` (another
        training set by hub id) is the suite option of the suites that declare one."""
        splits = [task.train_split] + [split for split, _ in task.eval_splits]
        return {split: locate_split(task.dataset, task.config, split, data_dir) for split in splits}

    # The selection split -----------------------------------------------------
    # A suite whose benchmark defines the split it selects hyperparameters on says what it is here
    # and gives it in `load_selection` (VTAB-1k: val200); the others carve it from the training split.
    own_selection: ClassVar[str | None] = None
    # Where evaluating on a selection split is not possible yet, why (one line).
    no_selection: ClassVar[str | None] = None

    def check_selection(self, run: "ResolvedRun") -> None:
        """A selection split the run asks for that the suite cannot give, refused before any work."""
        if self.no_selection and (run.selection_samples is not None or run.evaluate_on == "selection"):
            raise HarnessError(f"suite {self.name!r} has no selection split: {self.no_selection}")
        if self.own_selection and run.selection_samples is not None:
            raise HarnessError(
                f"suite {self.name!r} has its own selection split ({self.own_selection}); "
                "leave --selection-samples unset"
            )
        if not self.own_selection and run.evaluate_on == "selection" and run.selection_samples is None:
            raise HarnessError(
                "--evaluate-on selection needs --selection-samples N: the examples held out of the training "
                "split to score on (`harness tune` sets it)"
            )

    def split_training(self, task: Task, pool, run: "ResolvedRun"):
        """The training subset of the training split `pool`, and the selection split when the run
        holds one out (else None): disjoint, the same examples for every method and seed."""
        self.check_selection(run)
        if self.own_selection:
            selection = self.load_selection(task, run.data_dir) if run.evaluate_on == "selection" else None
            return fixed_subset(pool, run.max_train_samples), selection
        if run.selection_samples is None:
            return fixed_subset(pool, run.max_train_samples), None
        return training_and_selection(pool, run.max_train_samples, run.selection_samples)

    def selection_split(self, task: Task, run: "ResolvedRun") -> str | None:
        """What the run's selection split is, for its row (None: it holds none out)."""
        if self.own_selection:
            return self.own_selection
        if run.selection_samples is None:
            return None
        return (
            f"{task.train_split}: {run.selection_samples} examples held out (the last of its shuffle with seed "
            f"{DATA_SEED}; the training subset is drawn from the rest)"
        )

    def load_selection(self, task: Task, data_dir):
        """The suite's own selection split (see `own_selection`)."""
        raise NotImplementedError

    def load_train(self, task: Task, sources: dict[str, DataSource], run: "ResolvedRun"):
        """The training split, read (the pool the training subset and a selection split are drawn from)."""
        return self.load(sources[task.train_split])

    def load_eval(self, task: Task, sources: dict[str, DataSource], run: "ResolvedRun") -> list[tuple[str, str, Any]]:
        """(split, suffix, data set) of every evaluation split, loaded before any training."""
        sets = [
            (split, suffix, fixed_subset(self.load(sources[split]), run.max_eval_samples))
            for split, suffix in task.eval_splits
        ]
        for split, _, dataset in sets:
            self.check_split(task, split, dataset)
        return sets

    # What a split must hold, checked before any training ---------------------
    def required_columns(self, task: Task) -> tuple[str, ...]:
        """The input columns every split of the task needs (text fields, the image)."""
        return ()

    def label_column(self, task: Task) -> tuple[str, int | None] | None:
        """(column, classes) of the task's labels as the data stores them: labels are integers in
        0..classes-1, or real numbers where classes is None (regression). None: no label column
        (the suite scores otherwise, e.g. through lm-eval)."""
        return None

    def check_split(self, task: Task, split: str, dataset) -> None:
        """A split that cannot be trained on or scored is bad input, found before any training:
        no examples, a missing column, examples without a label, a label outside the classes."""
        where = f"split {split!r} of {self.name}/{task.name}"
        if len(dataset) == 0:
            raise HarnessError(f"{where} has no examples; check the data (or --max-train-samples/--max-eval-samples)")
        labels = self.label_column(task)
        wanted = self.required_columns(task) + ((labels[0],) if labels else ())
        missing = [c for c in wanted if c not in dataset.column_names]
        if missing:
            raise HarnessError(f"{where} lacks column(s) {missing}; has {dataset.column_names}")
        if labels:
            check_labels(where, dataset, *labels)

    def check_inputs(self, processor, task: Task, eval_sets, run: "ResolvedRun", model: torch.nn.Module) -> None:
        """Bad input found once the model and its processor are loaded, before training."""

    def before_method(
        self, model, processor, task: Task, eval_sets, run: "ResolvedRun", device, show_progress: bool, backend=None
    ) -> None:
        """What the suite measures on the model as loaded, before the method changes it (the lm-eval
        suite's retention tasks), kept in its eval sets for `evaluate`."""

    def evaluate(
        self,
        model: torch.nn.Module,
        processor,
        task: Task,
        eval_sets,
        run: "ResolvedRun",
        device: torch.device,
        show_progress: bool,
        backend=None,
    ) -> Evaluation:
        """Predictions on every evaluation split by the backend (harness/evaluation/base.py; None: the
        harness's own of `eval_kind`), scored by `compute_metrics`."""
        backend = self.eval_backend(backend)
        metrics: dict[str, float] = {}
        seconds = 0.0
        first = None
        examples: list[dict[str, Any]] = []
        for split, suffix, ds in eval_sets:
            data = self.prepare(ds, processor, task, run.max_length)
            predictions, took = backend.predict(
                model,
                data,
                lambda outputs: self.predictions(outputs, task),
                batch_size=run.eval_batch_size,
                precision=run.precision,
                device=device,
                label=f"eval {split}",
                show_progress=show_progress,
            )
            seconds += took
            metrics.update(
                {f"{k}{suffix}": v for k, v in self.compute_metrics(task, predictions, data.references).items()}
            )
            examples += self.example_records(task, split, suffix, example_ids(ds, self.id_column), predictions, data)
            first = first or data
        splits = [split for split, _, _ in eval_sets]
        return Evaluation(metrics, seconds, splits, len(first.dataset), first, examples=examples)

    def example_records(self, task: Task, split: str, suffix: str, ids: list[int], predictions, data) -> list[dict]:
        """One record per example of a split: its id, prediction, reference and score under the task's
        primary metric (with the split's suffix), null where that metric is corpus-level."""
        values = self.predicted_values(task, predictions)
        if not (len(ids) == len(values) == len(data.references)):
            raise RuntimeError(
                f"split {split!r}: {len(ids)} ids, {len(values)} predictions, {len(data.references)} references"
            )
        score = EXAMPLE_SCORES.get(task.primary_metric)
        metric = f"{task.primary_metric}{suffix}"
        return [
            {
                "split": split,
                "example_id": i,
                "metric": metric,
                "score": score(p, float(r)) if score else None,
                "prediction": p,
                "reference": float(r),
            }
            for i, p, r in zip(ids, values, data.references)
        ]

    def predicted_values(self, task: Task, predictions: list[Any]) -> list[float]:
        """Each example's prediction as a number: the class, or the regressed value."""
        return [float(p) for p in predictions]

    def inference_costs(
        self,
        model: torch.nn.Module,
        processor,
        evaluation: Evaluation,
        run: "ResolvedRun",
        device: torch.device,
        backend=None,
    ) -> dict[str, Any]:
        """Forward latency (batch 1 and the eval batch) and FLOPs per example on evaluation inputs."""
        return self.eval_backend(backend).costs(model, evaluation.data, run, device)

    def eval_backend(self, backend):
        """The evaluation backend the job chose, else the harness's own of the suite's `eval_kind`."""
        from harness.evaluation.base import current

        return backend if backend is not None else current(self.eval_kind)()

    def load(self, source: DataSource):
        """A located split, read; a file that is not Parquet, or holds no rows, is bad input."""
        check_files(source)
        name = "/".join(p for p in (source.hub_id, source.config) if p)
        try:
            dataset = load_split(source)
        except (HarnessError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - a file the reader rejects, whichever error it raises
            raise HarnessError(f"could not read split {source.split!r} of {name}: {first_line(exc)}") from None
        return with_example_ids(dataset, self.id_column)

    # Model and examples (suite-specific) -----------------------------------
    def build_model(self, location: str, task: Task, train_dataset) -> tuple[torch.nn.Module, Any]:
        raise NotImplementedError

    @staticmethod
    def check_model_config(config, name: str) -> None:
        """Refuse, before any work, a model this suite cannot use (`config` from AutoConfig)."""

    @classmethod
    def max_length_for(cls, config, asked: int | None, model: str) -> int:
        """The job's token length: the one asked for, which must fit the model's positions, else
        the suite's default cut to them (a position past the table fails mid-run, or worse, reads
        the wrong embedding). Image suites have no token length: their default stands."""
        limit = text_positions(config) if config is not None and cls.task_type != "image_cls" else None
        if asked is not None:
            if limit is not None and asked > limit:
                raise HarnessError(
                    f"--max-length {asked} exceeds the model's context window of {limit} tokens ({model!r}); pass at most {limit}"
                )
            return asked
        return min(cls.defaults.max_length, limit) if limit is not None else cls.defaults.max_length

    def head_modules(self, model: torch.nn.Module) -> tuple[str, ...]:
        """A freshly initialised task head: trained by every method, never compressed."""
        return ()

    def dense_modules(self, model: torch.nn.Module) -> tuple[str, ...]:
        """Modules that compression leaves alone besides the head (a causal LM's output layer)."""
        return ()

    def prepare(self, dataset, processor, task: Task, max_length: int) -> Prepared:
        raise NotImplementedError

    def prepare_train(self, dataset, processor, task: Task, run: "ResolvedRun") -> Prepared:
        self.check_split(task, task.train_split, dataset)
        return self.prepare(dataset, processor, task, run.max_length)

    def predictions(self, outputs, task: Task) -> list[Any]:
        raise NotImplementedError

    def compute_metrics(self, task: Task, predictions: list[Any], references: list[Any]) -> dict[str, float]:
        raise NotImplementedError
