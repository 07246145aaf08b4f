"""The result store: a folder of Parquet files, one per run, written atomically.

Files live at <results>/<suite>/<task>/<job_hash>-<run_id>.parquet. A file is written
under a dot-name in the same folder and renamed into place, so a reader (or a crash)
never sees half a file; readers skip dot- and underscore-files. Stores from several
machines merge by copying their files into one folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.atomic import atomic_write
from harness.schema import SCHEMA, to_table


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    table = to_table(rows)
    with atomic_write(path) as f:
        pq.write_table(table, f)
    return path


def row_path(results_dir: str | os.PathLike, row: dict[str, Any]) -> Path:
    return Path(results_dir) / row["suite"] / row["task"] / f"{row['job_hash']}-{row['run_id']}.parquet"


def write_row(row: dict[str, Any], results_dir: str | os.PathLike) -> Path:
    return write_rows([row], row_path(results_dir, row))


def result_files(results_dir: str | os.PathLike) -> list[Path]:
    root = Path(results_dir)
    return sorted(p for p in root.rglob("*.parquet") if not any(part.startswith((".", "_")) for part in p.relative_to(root).parts))


def read_results(results_dir: str | os.PathLike) -> pd.DataFrame:
    """All rows of a store as a DataFrame with the current schema (older files gain null columns)."""
    files = result_files(results_dir)
    if not files:
        return SCHEMA.empty_table().to_pandas()
    tables = [pq.read_table(f) for f in files]
    aligned = [_align(t) for t in tables]
    return pa.concat_tables(aligned).to_pandas()


def _align(table: pa.Table) -> pa.Table:
    columns = []
    for field in SCHEMA:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def latest_per_job(df: pd.DataFrame) -> pd.DataFrame:
    """One row per job hash: its latest ok row, else its latest failed row. Rows of one job from
    several machines, retries or re-runs resolve the same way whatever order files are read in."""
    if df.empty:
        return df
    ranked = df.assign(_ok=(df["status"] == "ok").astype(int)).sort_values(
        ["job_hash", "_ok", "created_at", "run_id"], ascending=[True, False, False, False], kind="mergesort",
    )
    return ranked.drop_duplicates("job_hash", keep="first").drop(columns="_ok").reset_index(drop=True)


def job_status(results_dir: str | os.PathLike) -> dict[str, str]:
    """job hash -> 'ok' or 'failed', as the store holds it now (latest successful wins)."""
    if not Path(results_dir).is_dir():
        return {}
    latest = latest_per_job(read_results(results_dir))
    return dict(zip(latest["job_hash"], latest["status"]))


def append_records(path: str | os.PathLike, records: list[dict[str, Any]]) -> Path:
    """Add free-form records (a benchmark's results, not run rows) to a Parquet file, atomically;
    columns new to the file are added, missing ones are null."""
    path = Path(path)
    table = pa.Table.from_pylist(records)
    if path.exists():
        table = pa.concat_tables([pq.read_table(path), table], promote_options="default")
    with atomic_write(path) as f:
        pq.write_table(table, f)
    return path
