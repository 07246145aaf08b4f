"""Per-example predictions of a run: one Parquet table per run, beside its row.

`<results>/_predictions/<job_hash>-<run_id>.parquet`, named like the run's row file, holds one
row per evaluated example (per lm-eval filter for a generation task) with the columns of
`harness.spec.schema.PREDICTION_COLUMNS`: the example's stable id, its split, the prediction,
the reference and its score under the row's metric. Two runs evaluated on the same examples
(two methods, two seeds) join on (split, example_id, metric), which a paired test needs. Like
the kernel tables it lies two levels down in an underscore folder, so the row readers and
`results/*/*/*.parquet` never see it; it is written atomically, and only by a run that ended
`ok`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.core.atomic import atomic_write
from harness.core.errors import HarnessError
from harness.spec.schema import PREDICTION_COLUMNS, PREDICTION_SCHEMA

_NAMES = tuple(c.name for c in PREDICTION_COLUMNS)
_OWN = frozenset(_NAMES) - {"job_hash", "run_id"}  # what a suite's records carry


def predictions_path(results_dir: str | os.PathLike, job_hash: str, run_id: str) -> Path:
    return Path(results_dir) / "_predictions" / f"{job_hash}-{run_id}.parquet"


def predictions_table(job_hash: str, run_id: str, records: list[dict[str, Any]]) -> pa.Table:
    """Records (a suite's, without job_hash and run_id) -> a table of the documented schema; a
    key outside the schema is a bug, not data to drop."""
    for record in records:
        unknown = set(record) - _OWN
        if unknown:
            raise KeyError(f"prediction record has columns not in the schema: {sorted(unknown)}")
    columns = {name: [r.get(name) for r in records] for name in _NAMES}
    columns["job_hash"] = [job_hash] * len(records)
    columns["run_id"] = [run_id] * len(records)
    return pa.Table.from_pydict(columns, schema=PREDICTION_SCHEMA)


def write_predictions(
    results_dir: str | os.PathLike, job_hash: str, run_id: str, records: list[dict[str, Any]]
) -> Path | None:
    """The run's table, written atomically; None (nothing written) when there are no records."""
    if not records:
        return None
    table = predictions_table(job_hash, run_id, records)
    path = predictions_path(results_dir, job_hash, run_id)
    with atomic_write(path) as f:
        # job_hash and run_id repeat on every row: dictionary-encoded, they cost a few bytes.
        pq.write_table(table, f, compression="zstd")
    return path


def read_predictions(results_dir: str | os.PathLike, job_hash: str, run_id: str) -> pd.DataFrame:
    """The run's predictions in the order they were evaluated (split by split, examples in order)."""
    path = predictions_path(results_dir, job_hash, run_id)
    if not path.is_file():
        raise HarnessError(
            f"no predictions for run {job_hash}-{run_id} in {results_dir} (expected {path}); "
            "a failed run, or one written before predictions were stored, has none"
        )
    return pq.read_table(path, schema=PREDICTION_SCHEMA).to_pandas()
