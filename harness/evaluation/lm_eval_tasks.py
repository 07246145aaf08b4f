"""Any lm-eval task or group, by name, with its data read from a local mirror.

`--task` names lm-eval tasks, groups or tags (`arc_easy`, `mmlu`, `wikitext`), a comma list of
them, or one of the harness's own groups (`commonsense`). lm-eval builds every task from its own
YAML (prompts, `process_docs`, metrics, filters); the harness changes one thing, where the data
comes from, by one rule for every task:

    a task's `dataset_path` / `dataset_name` is a hub id and config, so its split S is read from
    <mirror root>/<dataset_path>/<dataset_name or "default">/S-*.parquet (the hub's Parquet layout,
    harness/data/resolve.py), as `dataset_path: parquet` with `data_files`.

The split the task is scored on must be there (else one line naming the paths tried); a training,
validation or few-shot split the mirror lacks is set to null, as lm-eval itself requires of a
split that does not exist (its few-shot sampler is built when the task loads), and the row records
which ones. Without a mirror, lm-eval reads the hub as it does by itself.

The redirect is applied where lm-eval finalises a task's config (its task factory), so groups,
tags and nested groups (MMLU's 57 subjects under four categories) are built by lm-eval's own code.
"""

from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError, first_line
from harness.data.resolve import DataSource, check_files, mirror_root, split_files

# The harness's own groups, each averaged unweighted over its tasks' first metric, as the papers'
# "Avg." columns are: the eight commonsense reasoning tasks of LLM-Adapters (Hu et al., EMNLP 2023,
# Table 3) and DoRA (Liu et al., ICML 2024, Table 1).
COMMONSENSE = ("boolq", "piqa", "social_iqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")
HARNESS_GROUPS: dict[str, tuple[str, ...]] = {"commonsense": COMMONSENSE}
# The group a comma list of tasks is scored under: the unweighted mean of the tasks' first metric.
LIST_GROUP = "average"
# The splits a task config names, and which of them it is scored on (lm-eval: test, else validation).
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")
# A metric whose per-filter names read better shortened: lm-eval's gsm8k filters are
# "strict-match" and "flexible-extract" (rows say exact_match_strict, exact_match_flexible).
FILTER_WORD = "-"


def metric_name(key: str) -> str:
    """lm-eval's "<metric>,<filter>" as a row metric: the metric alone under the "none" filter,
    else the metric and the filter's first word (exact_match_flexible)."""
    metric, _, filter_name = key.partition(",")
    if filter_name in ("", "none"):
        return metric
    if metric.endswith("_stderr"):
        return f"{metric[: -len('_stderr')]}_{filter_name.split(FILTER_WORD)[0]}_stderr"
    return f"{metric}_{filter_name.split(FILTER_WORD)[0]}"


@lru_cache(maxsize=1)
def task_manager():
    """lm-eval's task index, built once per process (it parses every task's YAML: seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def task_names(spec: str) -> list[str]:
    """The names in a `--task` value, each a known lm-eval task, group or tag or a harness group;
    an unknown one is one line with close matches."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise HarnessError("--task is empty; name an lm-eval task or group, e.g. arc_easy or mmlu")
    if len(set(names)) != len(names):
        raise HarnessError(f"--task {spec!r} names a task twice")
    index = task_manager().task_index
    for name in names:
        if name not in index and name not in HARNESS_GROUPS:
            close = difflib.get_close_matches(name, [*HARNESS_GROUPS, *index], n=3, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}?" if close else "see `lm_eval ls tasks` for the names"
            raise HarnessError(f"lm-eval {lm_eval_version()} has no task or group {name!r}; {hint}")
    return names


def eval_split_key(config: dict[str, Any]) -> str:
    """The config key of the split lm-eval scores a task on: its test split, else validation."""
    return "test_split" if config.get("test_split") else "validation_split"


@dataclass
class Redirect:
    """What the rule did to one task's data: the files of each split, the splits it set to null."""

    task: str
    dataset: str  # hub id[/config]
    files: dict[str, list[str]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # config keys set to null


def point_at_mirror(config: dict[str, Any], root: Path) -> Redirect | None:
    """The task config reading its splits from the mirror at `root` (changed in place); None for a
    config that loads no hub data set (a custom loader, or no dataset_path)."""
    path = config.get("dataset_path")
    if not path or path == "parquet" or config.get("custom_dataset") is not None:
        return None
    name = config.get("dataset_name") or "default"  # the hub's Parquet export names a lone config so
    redirect = Redirect(config.get("task", "?"), f"{path}/{name}")
    scored = eval_split_key(config)
    for key in SPLIT_KEYS:
        split = config.get(key)
        if split is None:
            continue
        if split in redirect.files:
            continue
        files, patterns = split_files(root / path, name, split)
        if files:
            # lm-eval reads them itself: unreadable or empty is said now, naming the file.
            check_files(DataSource(path, name, split, tuple(files)))
            redirect.files[split] = files
        elif key == scored:
            raise HarnessError(
                f"lm-eval task {redirect.task!r} is scored on split {split!r} of {path}/{name}, which is not in the "
                f"data dir {str(root)!r} (tried {', '.join(patterns)}); add it there, or drop --data-dir to use the hub"
            )
        else:
            config[key] = None
            redirect.missing.append(key)
    config.update(dataset_path="parquet", dataset_name=None, dataset_kwargs={"data_files": redirect.files})
    return redirect


def _factory_class():
    """lm-eval's task factory with the mirror rule applied to each task's final config."""
    from lm_eval.tasks._factory import TaskFactory

    class MirrorFactory(TaskFactory):
        def __init__(self, root: Path | None, meta=None):
            super().__init__(meta=meta)
            self.root = root
            self.redirects: list[Redirect] = []

        def _load_full_config(self, entry, overrides=None):
            config = super()._load_full_config(entry, overrides)
            if self.root is not None and isinstance(config.get("task"), str):  # a task, not a group
                redirect = point_at_mirror(config, self.root)
                if redirect is not None:
                    self.redirects.append(redirect)
            return config

    return MirrorFactory


@dataclass
class LmEvalTasks:
    """The tasks a run evaluates, built by lm-eval (data loaded), and how their data was found."""

    spec: str
    objects: list[Any]  # lm-eval Task and Group objects, the `tasks` argument of simple_evaluate
    leaves: list[Any]  # every leaf Task, in order
    redirects: list[Redirect]
    # Each row metric name -> whether higher is better (lm-eval's own `higher_is_better`).
    higher_is_better: dict[str, bool] = field(default_factory=dict)
    # Each leaf's num_fewshot as its YAML sets it: lm-eval's simple_evaluate writes the number it
    # is called with into the task (and leaves a task set to 0 at 0), so a second call with another
    # number would keep the first's; `fresh` puts them back.
    fewshot_defaults: dict[str, Any] = field(default_factory=dict)

    def fresh(self) -> list[Any]:
        """The task objects for a new lm-eval call, with their few-shot settings as built."""
        for leaf in self.leaves:
            leaf.set_config(key="num_fewshot", value=self.fewshot_defaults.get(leaf.task_name))
        return list(self.objects)

    @property
    def single(self) -> bool:
        """One leaf task named alone: its metrics keep their plain names (acc, word_perplexity)."""
        return len(self.objects) == 1 and len(self.leaves) == 1 and self.objects[0] is self.leaves[0]

    def data_note(self) -> dict[str, Any]:
        """Where each task's data came from, for the row's eval settings."""
        return {
            r.task: {"dataset": r.dataset, "splits": sorted(r.files), "set_to_null": r.missing} for r in self.redirects
        }


def primary_metric(spec: str) -> str:
    """The row's primary metric for a `--task` value, from the tasks' YAML (nothing is built): a
    task's first metric under its first filter (acc, word_perplexity, exact_match_strict), a group's
    first aggregate metric ("mmlu/acc"), the average of a comma list's or a tag's tasks ("average/acc")."""
    from lm_eval.tasks._index import Kind

    names = task_names(spec)
    registry = task_manager().task_index
    if len(names) > 1:
        return f"{LIST_GROUP}/{_first_metric(names[0], registry)}"
    (name,) = names
    if name in HARNESS_GROUPS:
        return f"{name}/{_first_metric(HARNESS_GROUPS[name][0], registry)}"
    entry = registry[name]
    if entry.kind == Kind.TAG:
        return f"{LIST_GROUP}/{_first_metric(name, registry)}"
    if entry.kind == Kind.GROUP:
        config = _yaml(entry)
        if not config.get("aggregate_metric_list"):
            raise HarnessError(f"lm-eval group {name!r} reports no aggregate score; name its tasks with a comma list")
        return f"{name}/{_first_metric(name, registry)}"
    config = _yaml(entry)
    filters = [f.get("name", "none") for f in config.get("filter_list") or []]
    return metric_name(f"{_first_metric(name, registry)},{filters[0] if filters else 'none'}")


def build(spec: str, data_dir: str | os.PathLike | None) -> LmEvalTasks:
    """The lm-eval tasks of a `--task` value with their data (from the mirror where one is given)."""
    from lm_eval.api.group import Group

    names = task_names(spec)
    root = mirror_root(data_dir)
    manager = task_manager()
    for logger in ("lm_eval", "lm-eval"):  # its notes on defaults it fills in, for every task it builds
        logging.getLogger(logger).setLevel(logging.ERROR)
    factory = _factory_class()(root, meta=manager.metadata)
    registry = dict(manager.task_index)  # the factory registers namespaced names into what it is given

    def group_of(group: str, members) -> Any:
        first = _first_metric(members[0], registry)
        raw = {
            "group": group,
            "task": list(members),
            "aggregate_metric_list": [{"metric": first, "weight_by_size": False}],
        }
        return factory._build_group(group, raw, None, registry)

    try:
        if len(names) > 1:
            objects = [group_of(LIST_GROUP, names)]
        elif names[0] in HARNESS_GROUPS:
            objects = [group_of(names[0], HARNESS_GROUPS[names[0]])]
        else:
            built = factory.build(registry[names[0]], overrides=None, registry=registry)
            # A tag is a list of tasks, averaged as a comma list is.
            objects = [group_of(LIST_GROUP, [t.task_name for t in built])] if isinstance(built, list) else [built]
    except HarnessError:
        raise
    except Exception as exc:  # noqa: BLE001 - the hub offline, a gated data set, a broken file: one line
        where = f"the data dir {str(root)!r}" if root else "the hub"
        raise HarnessError(
            f"lm-eval could not load the data of {spec!r} from {where}: {first_line(exc)}"
            + ("" if root else "; pass --data-dir with a local mirror in the hub's Parquet layout")
        ) from None
    leaves = []
    for obj in objects:
        leaves += obj.get_all_tasks() if isinstance(obj, Group) else [obj]
    tasks = LmEvalTasks(spec, objects, leaves, factory.redirects)
    tasks.fewshot_defaults = {leaf.task_name: leaf.get_config("num_fewshot") for leaf in leaves}
    for leaf in leaves:
        tasks.higher_is_better.update({m: bool(h) for m, h in leaf.higher_is_better().items()})
    return tasks


def _yaml(entry) -> dict[str, Any]:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(entry.yaml_path, resolve_func=False) if entry.yaml_path else dict(entry.cfg or {})


def _first_metric(name: str, registry) -> str:
    """The first metric of a task (of a group's first task), from its YAML without building it."""
    from lm_eval.tasks._index import Kind

    if name in HARNESS_GROUPS:
        return _first_metric(HARNESS_GROUPS[name][0], registry)
    entry = registry[name]
    if entry.kind == Kind.TAG:
        return _first_metric(sorted(entry.tags)[0], registry)
    config = _yaml(entry)
    if entry.kind == Kind.GROUP:
        aggregate = config.get("aggregate_metric_list") or []
        if aggregate:
            return aggregate[0]["metric"]
        member = config["task"][0]
        return _first_metric(member if isinstance(member, str) else member.get("task") or member["group"], registry)
    return (config.get("metric_list") or [{"metric": "acc"}])[0]["metric"]
