"""The result store: a folder of Parquet files, one per run, written atomically.

Files live at <results>/<suite>/<task>/<job_hash>-<run_id>.parquet. A file is written
under a dot-name in the same folder and renamed into place, so a reader (or a crash)
never sees half a file; readers skip dot- and underscore-files. Stores from several
machines merge by copying their files into one folder. Side tables (kernel profiles,
benchmark records, the read index) live one level down, in underscore folders, so that
`results/*/*/*.parquet` matches run rows only.

Reading. One file per run is what makes writes atomic and stores mergeable by copying,
but opening a Parquet file costs about 2 ms here whatever its size (its footer and ~90
column chunks), so a 10,000-run store takes ~20 s to scan however it is scanned (one
pyarrow dataset scan is no faster than file by file). Readers therefore keep an index,
`<results>/_index/rows.parquet`: every row already read, with the path, size, mtime and
inode of the file it came from. A read lists the folder (stat only), takes the rows of
unchanged files from the index and scans only new or changed files, then rewrites the
index. The index is a cache: deleting it costs one full scan, a stale entry is never
used (any change to a file's stat re-reads it), and a read-only store is read without it.

A bad file (empty, truncated, not a result file, a column of the wrong type, a newer
schema version) is skipped with one warning line naming it, and counted; it never stops
the read. The fast path scans all new files at once; only when that scan fails are the
files split in halves until the bad ones are isolated.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from harness.core.atomic import atomic_write, remove_stale_temporaries
from harness.spec.schema import SCHEMA, SCHEMA_VERSION, to_table

INDEX_PATH = Path("_index") / "rows.parquet"
# A row without these is not a result row (a foreign Parquet file that happens to lie here).
REQUIRED = ("job_hash", "run_id", "status")
# What `job_status` (sweep planning) needs.
_NAMES = frozenset(SCHEMA.names)
STATUS_COLUMNS = ("job_hash", "status", "created_at", "run_id")
_PROVENANCE = pa.schema(
    [("_file", pa.string()), ("_size", pa.int64()), ("_mtime_ns", pa.int64()), ("_ino", pa.int64())]
)
_INDEX_SCHEMA = pa.schema(list(SCHEMA) + list(_PROVENANCE))
# The index is valid only for the schema (names, types, version) it was built with.
_FINGERPRINT = hashlib.sha256(
    repr([SCHEMA_VERSION, 1, [(f.name, str(f.type)) for f in _INDEX_SCHEMA]]).encode()
).hexdigest()[:16]


def write_rows(rows: list[dict[str, Any]], path: Path) -> Path:
    table = to_table(rows)
    with atomic_write(path) as f:
        pq.write_table(table, f)
    return path


def row_path(results_dir: str | os.PathLike, row: dict[str, Any]) -> Path:
    return Path(results_dir) / row["suite"] / row["task"] / f"{row['job_hash']}-{row['run_id']}.parquet"


def write_row(row: dict[str, Any], results_dir: str | os.PathLike) -> Path:
    return write_rows([row], row_path(results_dir, row))


@dataclass(frozen=True)
class _File:
    path: Path
    rel: str
    size: int
    mtime_ns: int
    ino: int


def _walk(root: Path) -> tuple[list[_File], list[Path]]:
    """Result files (with their stat) and atomic-write temporaries anywhere under `root`."""
    files, temporaries = [], []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        rel_folder = here.relative_to(root)
        side = any(part.startswith("_") for part in rel_folder.parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                temporaries.append(here / name)
            elif not side and name.endswith(".parquet") and not name.startswith((".", "_")):
                try:
                    st = os.stat(here / name)
                except FileNotFoundError:
                    continue  # removed while listing
                files.append(_File(here / name, (rel_folder / name).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino))
    files.sort(key=lambda f: f.rel)
    return files, temporaries


def result_files(results_dir: str | os.PathLike) -> list[Path]:
    root = Path(results_dir)
    return [f.path for f in _walk(root)[0]] if root.is_dir() else []


@dataclass
class StoreRead:
    frame: pd.DataFrame
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)


def read_store(results_dir: str | os.PathLike, columns: Sequence[str] | None = None) -> StoreRead:
    """Every readable row of a store with the current schema (older files gain null columns);
    with `columns`, only those (and the index is not rewritten: it holds whole rows)."""
    root = Path(results_dir)
    names = list(SCHEMA.names) if columns is None else list(columns)
    if not root.is_dir():
        return StoreRead(SCHEMA.empty_table().select(names).to_pandas())
    files, temporaries = _walk(root)
    remove_stale_temporaries(temporaries)
    index = _load_index(root, None if columns is None else sorted(set(names) | set(_PROVENANCE.names)))
    current = {f.rel: f for f in files}
    kept, new_files = _split(index, current)
    scanned, skipped = _scan(new_files, None if columns is None else names)
    for path, why in skipped:
        _warn_once(path, why)
    parts = [t for t in (kept, scanned) if t is not None and t.num_rows]
    if parts:
        # One chunk per column: a table of 10,000 one-row chunks is slow to write and to convert.
        table = pa.concat_tables([t.select(parts[0].column_names) for t in parts]).combine_chunks()
    else:
        table = _INDEX_SCHEMA.empty_table().select(names + list(_PROVENANCE.names))
    changed = index is None or bool(new_files) or kept is None or kept.num_rows != index.num_rows
    if columns is None and files and changed:
        _save_index(root, table)
    frame = table.select(names).to_pandas()
    frame.attrs["skipped_files"] = len(skipped)
    return StoreRead(frame, skipped)


# Files already warned about in this process: a command that reads its store twice (the
# report's rows, then its kernel tables' runs) names each bad file once.
_WARNED: set[tuple[str, str]] = set()


def _warn_once(path: Path, why: str) -> None:
    if (str(path), why) not in _WARNED:
        _WARNED.add((str(path), why))
        print(f"harness: warning: skipped {path}: {why}", file=sys.stderr)


def read_results(results_dir: str | os.PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """All rows of a store as a DataFrame; `attrs["skipped_files"]` counts unreadable files
    (each was named on stderr)."""
    return read_store(results_dir, columns).frame


def _load_index(root: Path, columns: list[str] | None) -> pa.Table | None:
    path = root / INDEX_PATH
    try:
        meta = pq.read_schema(path).metadata or {}
        if meta.get(b"harness_index") != _FINGERPRINT.encode():
            return None  # built by another harness version: rebuilt from the files
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException):
        return None  # none yet, or damaged (a cache: the files are the truth)


def _save_index(root: Path, table: pa.Table) -> None:
    table = table.cast(_INDEX_SCHEMA).replace_schema_metadata({"harness_index": _FINGERPRINT})
    try:
        with atomic_write(root / INDEX_PATH) as f:
            pq.write_table(table, f)
    except OSError:
        pass  # a read-only store is read in full each time; nothing is wrong with its rows


def _split(index: pa.Table | None, current: dict[str, _File]) -> tuple[pa.Table | None, list[_File]]:
    """Rows of the index whose file is unchanged, and the files the index does not cover."""
    if index is None or not index.num_rows:
        return None, list(current.values())
    keys = index.select(list(_PROVENANCE.names)).to_pydict()
    fresh, covered = [], set()
    for i, (rel, size, mtime, ino) in enumerate(zip(keys["_file"], keys["_size"], keys["_mtime_ns"], keys["_ino"])):
        f = current.get(rel)
        if f is not None and (f.size, f.mtime_ns, f.ino) == (size, mtime, ino):
            fresh.append(i)
            covered.add(rel)
    kept = index.take(pa.array(fresh, pa.int64())) if len(fresh) < index.num_rows else index
    return kept, [f for rel, f in current.items() if rel not in covered]


def _scan(files: list[_File], columns: list[str] | None) -> tuple[pa.Table | None, list[tuple[Path, str]]]:
    """Rows of `files` (schema columns, then provenance); the files that could not be read."""
    if not files:
        return None, []
    wanted = list(SCHEMA.names) if columns is None else list(dict.fromkeys([*columns, *REQUIRED, "schema_version"]))
    try:
        batches = _scan_all(files, wanted)
    except (OSError, pa.ArrowException) as exc:
        if len(files) == 1:
            return None, [(files[0].path, _reason(files[0].path, exc))]
        half = len(files) // 2
        left, bad_left = _scan(files[:half], columns)
        right, bad_right = _scan(files[half:], columns)
        parts = [t for t in (left, right) if t is not None]
        return (pa.concat_tables(parts) if parts else None), bad_left + bad_right
    by_path = {str(f.path): f for f in files}
    good, skipped = [], []
    for path, (fragment, file_batches) in batches.items():
        # A file without rows yields no batch and no fragment; its footer is still checked.
        why = _check(fragment.physical_schema if fragment is not None else pq.read_schema(path), file_batches)
        if why:
            skipped.append((Path(path), why))
            continue
        f = by_path[path]
        for batch in file_batches:
            n = batch.num_rows
            prov = [
                pa.array([f.rel] * n, pa.string()),
                pa.array([f.size] * n, pa.int64()),
                pa.array([f.mtime_ns] * n, pa.int64()),
                pa.array([f.ino] * n, pa.int64()),
            ]
            good.append(pa.RecordBatch.from_arrays(batch.columns + prov, names=batch.schema.names + _PROVENANCE.names))
    return (pa.Table.from_batches(good) if good else None), skipped


def _scan_all(files: list[_File], columns: list[str]) -> dict[str, tuple[Any, list[pa.RecordBatch]]]:
    """One dataset scan over every file, its batches grouped by file. The dataset's schema
    is the store's: columns a file lacks come back null; types are checked per file after."""
    dataset = ds.dataset([str(f.path) for f in files], schema=SCHEMA, format="parquet")
    out: dict[str, tuple[Any, list[pa.RecordBatch]]] = {str(f.path): (None, []) for f in files}
    for tagged in dataset.scanner(columns=columns).scan_batches():
        fragment = tagged.fragment
        out[fragment.path] = (fragment, out[fragment.path][1] + [tagged.record_batch])
    return out


def _check(physical: pa.Schema, batches: list[pa.RecordBatch]) -> str | None:
    """Why a file's rows cannot be used as they are, or None."""
    why = _check_schema(physical)
    if why:
        return why
    for batch in batches:
        for name in REQUIRED:
            if batch.column(batch.schema.get_field_index(name)).null_count:
                return f"not a result file (rows without {name})"
        version = batch.column(batch.schema.get_field_index("schema_version"))
        newest = pc.max(version).as_py()
        if newest is not None and newest > SCHEMA_VERSION:
            return (
                f"written by a newer harness (schema version {newest}, this one reads up to {SCHEMA_VERSION}); "
                "upgrade the harness to read it"
            )
    return None


@functools.lru_cache(maxsize=64)  # a store's files share a handful of schemas
def _check_schema(physical: pa.Schema) -> str | None:
    """The scan casts silently (an integer job_hash becomes a string, '0.9' a float); a result
    file has the exact types."""
    wrong = [
        f"{f.name} is {f.type}, not {SCHEMA.field(f.name).type}"
        for f in physical
        if f.name in _NAMES and f.type != SCHEMA.field(f.name).type and not pa.types.is_null(f.type)
    ]
    if wrong:
        return "wrong column type (" + "; ".join(wrong[:3]) + ")"
    missing = [c for c in REQUIRED if c not in physical.names]
    if missing:
        return f"not a result file (no {', '.join(missing)} column)"
    return None


def _reason(path: Path, exc: BaseException) -> str:
    """Why one file failed the scan: a wrong column type when its footer says so (the scan's
    own message is about a failed cast), else the reader's error."""
    try:
        why = _check_schema(pq.read_schema(path))
    except (OSError, pa.ArrowException):
        why = None
    if why:
        return why
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"unreadable Parquet ({text})"


def job_rows(results_dir: str | os.PathLike, suite: str, task: str, job_hash: str) -> pd.DataFrame:
    """The rows of one job, read from its own files only (a cheap check, e.g. after claiming it)."""
    folder = Path(results_dir) / suite / task
    files = [_File(p, p.name, 0, 0, 0) for p in sorted(folder.glob(f"{job_hash}-*.parquet"))] if folder.is_dir() else []
    table, _ = _scan(files, list(STATUS_COLUMNS))
    if table is None:
        return SCHEMA.empty_table().select(list(STATUS_COLUMNS)).to_pandas()
    return table.select(list(STATUS_COLUMNS)).to_pandas()


def latest_per_job(df: pd.DataFrame) -> pd.DataFrame:
    """One row per job hash: its latest ok row, else its latest failed row. Rows of one job from
    several machines, retries or re-runs resolve the same way whatever order files are read in."""
    if df.empty:
        return df
    ranked = df.assign(_ok=(df["status"] == "ok").astype(int)).sort_values(
        ["job_hash", "_ok", "created_at", "run_id"],
        ascending=[True, False, False, False],
        kind="mergesort",
    )
    return ranked.drop_duplicates("job_hash", keep="first").drop(columns="_ok").reset_index(drop=True)


def job_status(results_dir: str | os.PathLike) -> dict[str, str]:
    """job hash -> 'ok' or 'failed', as the store holds it now (latest successful wins); reads
    only the columns that decide it."""
    if not Path(results_dir).is_dir():
        return {}
    rows = read_results(results_dir, columns=(*STATUS_COLUMNS, "identity_upgraded_from"))
    # A row re-keyed by `harness store upgrade` was measured by an older harness, whose costs
    # meant other things (CPU memory of the whole process, non-persistent buffers in model_bytes,
    # batch-norm statistics moved by profiling): readable, but the job is not done until run again.
    rows = rows[rows["identity_upgraded_from"].isna()]
    latest = latest_per_job(rows)
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


def kernel_table_path(results_dir: str, job_hash: str, run_id: str) -> Path:
    """One table per run, named like the run's row file: CPU and GPU runs of a config, and
    re-runs, each keep their own. Two levels down (not suite/task/file, as rows are), so
    `results/*/*/*.parquet` matches rows only."""
    return Path(results_dir) / "_kernels" / f"{job_hash}-{run_id}.parquet"
