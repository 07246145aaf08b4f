"""Sweep files: YAML grids and lists of runs, validated before any job starts.

    results: results                 # optional; the store every job writes to
    defaults: {max_steps: 20}        # any run option or suite option (`harness list options`), for every job
    grid:                            # the cartesian product of every list (a scalar is a list of one)
      suite: glue
      task: [sst2, rte]
      method: [lora, "lora:r=16", dora]
      seed: [0, 1, 2]
    runs:                            # single jobs besides the grid (merged over defaults)
      - {suite: gsm8k, method: lora, model: smollm2-135m, resources: {timeout: 7200}}
    resources: {timeout: 3600, retries: 1, jobs_per_device: 1, memory_limit_gb: 16}
    tune: {trials: 5, seeds: [0, 1, 2]}  # optional: tune every job instead (`harness tune FILE`)

A run in `runs` may override timeout, retries and memory_limit_gb for itself.

`grid` may also be a list of such mappings (one product each). Every error names the
file, the line and the key it is about, and is raised before anything runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from harness.core.errors import HarnessError
from harness.spec.numbers import Number
from harness.spec.tuning import TuneBlock

Path_ = tuple[Any, ...]  # keys and indices from the document's root to a node


class Resources(BaseModel):
    # Finite numbers only: `timeout: .inf` is no timeout said wrongly (leave it out for none), and
    # an infinite memory limit cannot be set. Counts are integers, not true/false.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    timeout: Number | None = Field(None, gt=0, description="seconds before a job's process tree is killed")
    retries: StrictInt = Field(0, ge=0, description="new attempts for a job that failed")
    jobs_per_device: StrictInt = Field(1, gt=0, description="jobs sharing one GPU (when they fit)")
    memory_limit_gb: Number | None = Field(None, gt=0, description="address-space limit of each job process")


class SweepFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    results: str | None = None
    data_dir: str | None = None
    defaults: dict[str, Any] = {}
    grid: dict[str, Any] | list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    resources: Resources = Resources()
    # The fair-comparison protocol (harness/spec/tuning.py): run with `harness tune FILE`.
    tune: TuneBlock | None = None


@dataclass
class SweepJobSpec:
    """One job of a sweep as the file describes it, and where each of its values came from."""

    values: dict[str, Any]  # RunSpec fields
    origin: dict[str, Path_]  # field -> path of the YAML node that gave it
    resources: Resources


class _Lines:
    """Line numbers of a YAML document's nodes, by path."""

    def __init__(self, text: str):
        import yaml

        self.lines: dict[Path_, int] = {}
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            self._walk(node, ())

    def _walk(self, node, path: Path_) -> None:
        import yaml

        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.lines[path + (key.value,)] = key.start_mark.line + 1
                self._walk(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._walk(item, path + (i,))

    def of(self, path: Path_) -> int | None:
        while path and path not in self.lines:
            path = path[:-1]
        return self.lines.get(path)


def describe(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class SweepError(HarnessError):
    pass


@dataclass
class LoadedSweep:
    file: Path
    config: SweepFile
    jobs: list[SweepJobSpec]
    lines: _Lines

    def error(self, path: Path_, message: str) -> SweepError:
        line = self.lines.of(path)
        where = f"{self.file}:{line}" if line else str(self.file)
        return SweepError(f"{where}: {describe(path)}: {message}" if path else f"{where}: {message}")


def load_sweep(file: str | Path) -> LoadedSweep:
    """Parse and structurally validate a sweep file, and expand it into job specs."""
    import yaml

    path = Path(file)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        lines = _Lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SweepError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep file is a mapping with grid, runs, defaults, resources")
    try:
        config = SweepFile(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p in ("list[dict[str,any]]", "dict[str,any]")))
        loaded = LoadedSweep(path, SweepFile(), [], lines)
        raise loaded.error(loc, _pydantic_message(err)) from None
    loaded = LoadedSweep(path, config, [], lines)
    loaded.jobs = _expand(loaded)
    if not loaded.jobs:
        raise SweepError(f"{path}: no jobs: give a grid or runs")
    return loaded


def _pydantic_message(err: dict) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    return f"{err['msg']} (got {err.get('input')!r})"


def _expand(loaded: LoadedSweep) -> list[SweepJobSpec]:
    config = loaded.config
    defaults = {k: (v, ("defaults", k)) for k, v in config.defaults.items()}
    jobs: list[SweepJobSpec] = []
    grids = config.grid if isinstance(config.grid, list) else ([config.grid] if config.grid else [])
    for g, grid in enumerate(grids):
        base: Path_ = ("grid", g) if isinstance(config.grid, list) else ("grid",)
        axes = []
        for key, value in grid.items():
            values = value if isinstance(value, list) else [value]
            if not values:
                raise loaded.error(base + (key,), "an empty list makes the grid empty")
            paths = [base + (key, i) for i in range(len(values))] if isinstance(value, list) else [base + (key,)]
            axes.append([(key, v, p) for v, p in zip(values, paths)])
        for combo in itertools.product(*axes):
            merged = {**defaults, **{key: (v, p) for key, v, p in combo}}
            jobs.append(
                SweepJobSpec(
                    {k: v for k, (v, _) in merged.items()}, {k: p for k, (_, p) in merged.items()}, config.resources
                )
            )
    for i, run in enumerate(config.runs):
        run = dict(run)
        resources = config.resources
        if "resources" in run:
            own = run.pop("resources")
            if not isinstance(own, dict):
                raise loaded.error(("runs", i, "resources"), "a mapping of timeout, retries, memory_limit_gb")
            if "jobs_per_device" in own:
                raise loaded.error(
                    ("runs", i, "resources", "jobs_per_device"), "set jobs_per_device for the whole sweep"
                )
            try:
                resources = Resources(**{**config.resources.model_dump(), **own})
            except ValidationError as exc:
                err = exc.errors()[0]
                raise loaded.error(("runs", i, "resources", *err["loc"]), _pydantic_message(err)) from None
        merged = {**defaults, **{k: (v, ("runs", i, k)) for k, v in run.items()}}
        jobs.append(
            SweepJobSpec({k: v for k, (v, _) in merged.items()}, {k: p for k, (_, p) in merged.items()}, resources)
        )
    return jobs
