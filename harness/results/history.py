"""The history of nightly result stores, one folder per night, and the trend over its nights.

    <history>/2026-01-02/<suite>/<task>/<job_hash>-<run_id>.parquet    one night: a copy of its store
    <history>/2026-01-03/...

A night is an ordinary result store, so `harness compare` and `harness report` read it as
it is. A night is added whole or not at all (copied under a dot-name, then renamed), and
readers skip dot-folders, so an interrupted copy never shows up as a short night.

The trend: per night and configuration the mean score over seeds and the mean of the main
costs; the latest change: what `compare_stores` finds between the last two nights. The page
that shows them is harness.site.trend.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.core.errors import HarnessError
from harness.results import grouping
from harness.results.compare import METRIC_K, Comparison, compare_stores
from harness.results.store import latest_per_job, read_results, read_store, result_files
from harness.results.values import score_direction

NIGHT_FORMAT = "%Y-%m-%d"
# One trend row per night and per these: the seeds of one configuration are averaged.
# `setting` is the configuration (harness.results.grouping) less the code and weights that ran, so that
# a method's fix or a new model revision continues its line while another learning rate,
# budget or device is a line of its own.
TREND_KEYS = ("suite", "task", "method", "model", "setting")
TREND_CODE_KEYS = ("method_versions", "model_digest")


@dataclass(frozen=True)
class Cost:
    column: str
    title: str
    scale: float = 1.0  # divide by this for display


COSTS = (
    Cost("train_seconds", "training time (s)"),
    Cost("peak_memory_bytes", "peak memory (MiB)", 2**20),
    Cost("latency_bs1_p50_ms", "latency at batch 1, p50 (ms)"),
    # The size a deployment stores: the compressed format's bytes where a method reports them.
    Cost("stored_model_bytes", "model size (MiB)", 2**20),
)
TREND_COLUMNS = [
    "night",
    *TREND_KEYS,
    "metric",
    "score",
    "higher_is_better",
    "seeds",
    "failed",
    *(c.column for c in COSTS),
    "device_name",
]


def append_night(
    store_dir: str | os.PathLike, history_dir: str | os.PathLike, date: str | None = None, replace: bool = False
) -> Path:
    """Copy the result files of one night's store into <history>/<date>/ (date: YYYY-MM-DD,
    today in UTC by default) and return that folder. An existing night is kept unless
    `replace`: a second nightly on the same day is more likely a mistake than intent."""
    store = Path(store_dir)
    files = _store_files(store)
    _check_readable(store)
    if Path(history_dir).resolve().is_relative_to(store.resolve()):
        # The store's files would then include the history's, copied into each new night.
        raise HarnessError(f"history {history_dir} is inside the store {store}; keep them apart")
    night = Path(history_dir) / _night_name(date)
    if night.exists() and not replace:
        raise HarnessError(
            f"night {night.name} is already in {history_dir}; give another date or replace it (--replace)"
        )
    staged = _stage_copy(store, files, night)
    _move_into_place(staged, night)
    return night


def _store_files(store: Path) -> list[Path]:
    if not store.is_dir():
        raise HarnessError(f"store {store}: no such folder")
    files = result_files(store)
    if not files:
        raise HarnessError(f"store {store}: no result files (*.parquet), nothing to add")
    return files


def _check_readable(store: Path) -> None:
    """A night is history: a store with a file no reader can use, or with no rows at all, is
    refused before anything is copied (readers would skip the file on every render)."""
    read = read_store(store)
    if read.skipped:
        path, why = read.skipped[0]
        more = f" (and {len(read.skipped) - 1} more)" if len(read.skipped) > 1 else ""
        raise HarnessError(
            f"store {store}: {path} is not a readable result file ({why}){more}; "
            "remove or repair it before adding the night"
        )
    if read.frame.empty:
        raise HarnessError(f"store {store}: no readable rows, nothing to add")


def _night_name(date: str | None) -> str:
    if date is None:
        return datetime.now(timezone.utc).strftime(NIGHT_FORMAT)
    if _parse_night(date) is None:
        raise HarnessError(f"date {date!r}: give a night as YYYY-MM-DD")
    return date


def _parse_night(name: str) -> Date | None:
    """The date a folder name stands for; None for anything else (so '2026-1-2', dot-folders
    and stray folders are not nights: the name must be exactly YYYY-MM-DD)."""
    try:
        day = datetime.strptime(name, NIGHT_FORMAT).date()
    except ValueError:
        return None
    return day if day.strftime(NIGHT_FORMAT) == name else None


def _stage_copy(store: Path, files: list[Path], night: Path) -> Path:
    """The store's files copied under a dot-folder beside the night (same filesystem, so the
    rename that follows is atomic)."""
    night.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{night.name}.", suffix=".tmp", dir=night.parent))
    try:
        for source in files:
            target = staged / source.relative_to(store)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        os.chmod(staged, 0o777 & ~_umask())  # mkdtemp makes 0700; a history is meant to be shared
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def _move_into_place(staged: Path, night: Path) -> None:
    """Rename the staged folder to the night. A night being replaced is first renamed aside, so
    a crash leaves the old night or the new one (or, between the two renames, the old one
    under a dot-name), never a mix of both."""
    old = staged.with_name(staged.name.removesuffix(".tmp") + ".old") if night.exists() else None
    try:
        if old is not None:
            os.rename(night, old)
        os.rename(staged, night)
    except OSError as exc:  # e.g. another process added the same night meanwhile
        if old is not None and old.exists() and not night.exists():
            os.rename(old, night)  # put the night being replaced back
        shutil.rmtree(staged, ignore_errors=True)
        raise HarnessError(f"night {night}: could not move the copy into place ({exc.strerror})") from None
    if old is not None:
        shutil.rmtree(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def nights(history_dir: str | os.PathLike) -> list[tuple[Date, Path]]:
    """(date, folder) of every night in the history, oldest first; none for a missing folder."""
    root = Path(history_dir)
    if not root.is_dir():
        return []
    found = [(_parse_night(p.name), p) for p in root.iterdir() if p.is_dir()]
    return sorted((day, path) for day, path in found if day is not None)


def trend(history_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per night and (suite, task, method, model): the mean score over the seeds that
    succeeded and which way it is better (`higher_is_better`; null where none succeeded), how
    many did (`seeds`) and failed (`failed`), and the mean of each cost in COSTS. Each night is
    first reduced to one row per job (`latest_per_job`), so retries and re-runs within a night
    count once."""
    frames = [_night_summary(day, path) for day, path in nights(history_dir)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=TREND_COLUMNS)
    return pd.concat(frames, ignore_index=True)[TREND_COLUMNS]


def _night_summary(day: Date, path: Path) -> pd.DataFrame:
    df = latest_per_job(read_results(path))
    if df.empty:
        return df
    df = df.assign(
        stored_model_bytes=df["compressed_model_bytes"].fillna(df["model_bytes"]),
        setting=[_trend_setting(row) for row in df.to_dict("records")],
    )
    keys = list(TREND_KEYS)
    ok = df[df["status"] == "ok"]
    stats = ok.groupby(keys, dropna=False).agg(
        metric=("metric", "first"),
        score=("score", "mean"),
        higher_is_better=("higher_is_better", score_direction),
        seeds=("run_id", "size"),
        **{c.column: (c.column, "mean") for c in COSTS},
        device_name=("device_name", _distinct),
    )
    failed = df[df["status"] != "ok"].groupby(keys, dropna=False).size().rename("failed")
    out = stats.join(failed, how="outer").reset_index()
    out["seeds"] = out["seeds"].fillna(0).astype(int)
    out["failed"] = out["failed"].fillna(0).astype(int)
    out.insert(0, "night", day)
    return out


def _trend_setting(row: dict) -> str:
    settings = {k: v for k, v in grouping.settings(row).items() if k not in TREND_CODE_KEYS}
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)


def _distinct(values: pd.Series) -> str:
    """The devices behind a mean: costs measured on different hardware should not be read as a
    trend, and the page says which hardware each point comes from."""
    return ", ".join(sorted({str(v) for v in values.dropna()}))


# Latest change ----------------------------------------------------------------------------


@dataclass
class LatestChange:
    base: Date
    new: Date
    comparison: Comparison | None
    problem: str | None = None  # why the two nights could not be compared


def latest_change(
    history_dir: str | os.PathLike,
    metric_tolerance: float = 0.005,
    time_tolerance: float = 0.10,
    metric_k: float = METRIC_K,
) -> LatestChange | None:
    """`compare_stores` between the last two nights; None with fewer than two."""
    found = nights(history_dir)
    if len(found) < 2:
        return None
    (base_day, base), (new_day, new) = found[-2:]
    try:
        return LatestChange(base_day, new_day, compare_stores(base, new, metric_tolerance, time_tolerance, metric_k))
    except HarnessError as exc:  # e.g. every run of the night before failed: the page still says so
        return LatestChange(base_day, new_day, None, str(exc))
