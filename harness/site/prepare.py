"""From a result store to what the report's pages show: per suite and task a TaskSection (its
runs, leaderboard, tuning groups, failed runs and Pareto panels), which runs get a page of their own, the
tables benchmarks/ wrote under <results>/_benchmarks/ and the kernel tables of
<results>/_kernels/."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from harness.core.errors import first_line
from harness.results import grouping, versus
from harness.results.store import latest_per_job, read_results
from harness.results.values import plain
from harness.site.columns import (
    ADAPTER_SHARE,
    CONCURRENT_JOBS,
    GROUP_COLUMNS,
    TIME_TO_TRAINED,
    CostAxis,
    pareto_page,
    run_page,
    slug,
)
from harness.site.figures import (
    Panel,
    axis_points,
    benchmark_figure,
    kernel_figure,
    overview_panel,
    task_direction,
    task_panels,
)
from harness.site.tables import Table, failed_table, front_summary, leaderboard_table, tuning_table

KERNEL_TOP = 15  # kernels listed per phase on a run page


@dataclass
class TaskSection:
    suite: str
    task: str
    metric: str
    anchor: str
    page: str
    rows: list[dict]  # ok runs scored on the reported split, best score first
    failed: list[dict]
    leaderboard: Table | None = None
    failed_table: Table | None = None
    panels: list[Panel] = field(default_factory=list)
    # Tuning trials (`harness tune`): scored on the selection split, so in the tuning table only,
    # never in the leaderboard, the fronts or the plots of the reported split.
    trials: list[dict] = field(default_factory=list)
    tuning: Table | None = None
    higher_is_better: bool = True  # of the task's score; False for a perplexity

    @property
    def figures(self) -> list[dict]:
        return [p.figure for p in self.panels]

    @property
    def axes(self) -> list[CostAxis]:
        return list(dict.fromkeys(p.axis for p in self.panels))

    @property
    def overview(self) -> Panel | None:
        """The one Pareto panel the index shows for this task (figures.OVERVIEW_AXES)."""
        return overview_panel(self.panels)

    @property
    def overview_front(self) -> Table | None:
        """That panel's Pareto-optimal runs, as listed beside its plot on the index."""
        panel = self.overview
        return None if panel is None else front_summary(panel.front)


def _time_to_trained(df: pd.DataFrame) -> pd.Series:
    """TIME_TO_TRAINED per row (see its doc)."""
    init = df["init_seconds"] if "init_seconds" in df else pd.Series(np.nan, index=df.index)
    known = df["train_seconds"] + init
    old = (df["pipeline_seconds"] - df["compress_seconds"].fillna(0)).clip(lower=df["train_seconds"])
    return known.fillna(old).fillna(df["train_seconds"])


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Derived columns the pages need; every run gets a page until `limit_run_pages` says otherwise."""
    for column in (ADAPTER_SHARE, CONCURRENT_JOBS):  # stores written before these columns existed
        if column not in df:
            df = df.assign(**{column: np.nan})
    if "higher_is_better" not in df:
        df = df.assign(higher_is_better=None)  # missing means higher is better
    pages = [run_page(j, r) for j, r in zip(df["job_hash"], df["run_id"])]
    columns = [c for c in ("config", *GROUP_COLUMNS) if c in df]
    groups = [grouping.group_key({k: plain(v) for k, v in r.items()}) for r in df[columns].to_dict("records")]
    role_columns = [c for c in ("config", "eval_split", "tuning_role") if c in df]
    selection = [
        versus.scored_on_selection({k: plain(v) for k, v in r.items()}) for r in df[role_columns].to_dict("records")
    ]
    return df.assign(
        stored_model_bytes=df["compressed_model_bytes"].fillna(df["model_bytes"]),
        ms_per_generated_token=1e3 / df["generation_batch_tokens_per_s"],
        **{TIME_TO_TRAINED: _time_to_trained(df)},
        _page=pages,
        _paged=True,
        _group=groups,
        _selection=selection,
    )


def _best_first(ok: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """One task's ok runs, best score first (the lowest first where lower is better), and that direction."""
    higher = task_direction(ok)
    return ok.sort_values("score", ascending=not higher, na_position="last", kind="mergesort"), higher


def _paged_jobs(group: pd.DataFrame, limit: int) -> list[str]:
    """The runs of one task that get a page: each leaderboard line's best run (its method links it) and every
    Pareto-optimal run (what the index and the plots single out), then the best by score up
    to `limit` (more where those alone exceed it); failed runs, for their traceback, up to `limit`."""
    ok, higher = _best_first(group[group["status"] == "ok"])
    trials, ok = ok[ok["_selection"]], ok[~ok["_selection"]]
    chosen = dict.fromkeys(ok.drop_duplicates("_group")["job_hash"])
    for _, _, points in axis_points(ok, higher):
        chosen.update(dict.fromkeys(points.loc[points["_front"], "job_hash"]))
    for job in [*ok["job_hash"], *trials["job_hash"]]:  # trials after the reported runs
        if len(chosen) >= limit:
            break
        chosen[job] = None
    return [*chosen, *group.loc[group["status"] != "ok", "job_hash"][:limit]]


def limit_run_pages(df: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """Mark which runs get a page (`_paged`), at most about `limit` per task; None: all."""
    if limit is None:
        return df
    paged = [job for _, group in df.groupby(["suite", "task"]) for job in _paged_jobs(group, limit)]
    return df.assign(_paged=df["job_hash"].isin(paged))


def records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts with None for every missing value (NaN in float and object columns alike);
    through Arrow, which maps NaN to null and is several times faster than pandas here."""
    return pa.Table.from_pandas(df, preserve_index=False).to_pylist()


def build_sections(df: pd.DataFrame, results_dir: str | os.PathLike | None = None) -> list[TaskSection]:
    """Per task its section; with the store's folder, leaderboard lines are tested against the best
    line on their per-example predictions (`versus.against_best`)."""
    if "_page" not in df:
        df = prepare(df)
    sections = []
    for (suite, task), group in df.groupby(["suite", "task"], sort=True):
        ranked, higher = _best_first(group[group["status"] == "ok"])
        ok = ranked[~ranked["_selection"]].reset_index(drop=True)
        trials = records(ranked[ranked["_selection"]])
        failed = group[group["status"] != "ok"].reset_index(drop=True)
        metric = ok["metric"].iloc[0] if len(ok) else (trials[0]["metric"] if trials else "")
        rows, failed_rows = records(ok), records(failed)
        sections.append(
            TaskSection(
                suite,
                task,
                metric,
                slug(f"{suite}-{task}"),
                pareto_page(suite, task),
                rows,
                failed_rows,
                leaderboard_table(ok, rows, results_dir, trials) if len(ok) else None,
                failed_table(failed_rows) if failed_rows else None,
                task_panels(ok, suite, task, metric) if len(ok) else [],
                trials,
                tuning_table(trials, rows),
                higher,
            )
        )
    return sections


@dataclass
class BenchmarkSection:
    name: str
    anchor: str
    columns: list[str]
    rows: list[dict]
    figure: dict | None


def benchmark_sections(results_dir: str | os.PathLike) -> list[BenchmarkSection]:
    """Tables written by benchmarks/ under <results>/_benchmarks/: a table and a bar chart of
    every *_ms_p50 column per method (latest run of each file)."""
    import pyarrow.parquet as pq

    sections = []
    for path in sorted((Path(results_dir) / "_benchmarks").glob("*.parquet")):
        df = pq.read_table(path).to_pandas()
        if "created_at" in df and len(df):
            df = df[df["created_at"] == df["created_at"].max()]
        timed = [c for c in df.columns if c.endswith("_ms_p50")]
        figure = benchmark_figure(df, path.stem, timed) if timed and "method" in df else None
        shown = [c for c in df.columns if c not in ("created_at", "git_commit", "torch_version", "peft_version")]
        rows = [{c: plain(v) for c, v in r.items()} for r in df[shown].to_dict("records")]
        sections.append(BenchmarkSection(path.stem, f"bench-{path.stem}", shown, rows, figure))
    return sections


def _kernel_phase(table: pd.DataFrame, phase: str) -> dict:
    """Top kernels of one phase and a bar chart of its kernel time by category."""
    rows = table.sort_values("total_us", ascending=False, kind="mergesort")
    by_category = rows.groupby("category", dropna=False)["total_us"].sum().sort_values()  # largest drawn on top
    top = [{k: plain(v) for k, v in r.items()} for r in rows.head(KERNEL_TOP).to_dict("records")]
    return {
        "phase": phase,
        "rows": top,
        "n": len(rows),
        "total_ms": float(rows["total_us"].sum()) / 1e3,
        "figure": kernel_figure(by_category, phase),
    }


def kernel_profile(path: Path | None) -> list[dict]:
    """Per phase (train, then inference) the kernel table of one job; [] without a profile."""
    if path is None:
        return []
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path).to_pandas()
    except (OSError, ValueError) as exc:  # a truncated or foreign file (pyarrow's ArrowInvalid is a ValueError)
        print(f"harness: warning: skipped kernel table {path}: {first_line(exc)}", file=sys.stderr)
        return []
    if "phase" not in table.columns:
        print(f"harness: warning: skipped kernel table {path}: no 'phase' column", file=sys.stderr)
        return []
    order = {"train": 0, "inference": 1}
    phases = sorted(table["phase"].dropna().unique(), key=lambda p: (order.get(p, 2), p))
    return [_kernel_phase(table[table["phase"] == phase], phase) for phase in phases]


def kernel_files(results_dir: str | os.PathLike) -> dict[str, Path]:
    """Kernel tables by "<job_hash>-<run_id>" (one per run) and by job hash: the table of the
    run the store's rule picks for that job (latest ok, as the report's rows), none if that
    run was not profiled. Tables of older stores, `<job_hash>.parquet`, serve their job."""
    folder = Path(results_dir) / "_kernels"
    if not folder.is_dir():
        return {}
    files = {path.stem: path for path in folder.glob("*.parquet")}
    per_run = {stem for stem in files if "-" in stem}
    if per_run:
        from harness.results.store import STATUS_COLUMNS

        jobs = {stem.partition("-")[0] for stem in per_run}
        rows = read_results(results_dir, columns=STATUS_COLUMNS)
        latest = latest_per_job(rows[rows["job_hash"].isin(jobs)])
        for job, run in zip(latest["job_hash"], latest["run_id"]):
            if f"{job}-{run}" in files:
                files[job] = files[f"{job}-{run}"]
    return files
