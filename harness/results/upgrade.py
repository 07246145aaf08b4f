"""`harness store upgrade`: bring a result store written by an older harness to the current schema.

Each schema version that changed what a column means has one step here (`STEPS`), from
version n to n+1, applied in turn to every row of an older version. The whole store is
planned before anything is written, so a store that cannot be upgraded (a row from a newer
harness) is left untouched. Each upgraded row is written atomically to its new name (its
job_hash changes), and the old file is removed only once every row it held is in place: a
store interrupted half-way is finished by running the command again. Do not run it while a
sweep writes to the same store.

Schema 1 -> 2: job_hash becomes the versioned identity of harness/spec/run.py. A row is
re-keyed from what it recorded:
- its `config` JSON; a setting the harness gained after the row was written takes the value
  the code had before it existed (`ABSENT_IN_SCHEMA_1`: no kernel profiling, a linear schedule,
  no accumulation, ...);
- the device type of its `device` column, the device the job ran on, so that a CPU and a GPU
  run that shared one old hash become two jobs ("unknown" where the row has no device: such a
  row is read but matches no new run);
- version 1 of every method: rows of a method whose version was bumped since are stale, as
  they should be;
- the model's digest, taken from the model as it is now at the recorded location (a local
  folder or checkpoint: its content, and a folder's `model_hub_id` becomes `dir-sha256:<digest>`
  instead of its path; a hub model: the revision the local hub cache holds).
  This is the one thing an old row did not record, so the upgrade assumes the model was not
  changed since the run. A model no longer there gets the digest `unavailable`: the row stays
  readable and matches no new run.
The old hash is kept in `identity_upgraded_from`. A kernel table of schema 1
(`_kernels/<job_hash>.parquet`, rewritten by every profiled run of the hash) becomes the table
of the latest profiled run when all rows of its old hash have one new hash; when CPU and GPU
runs shared the old hash it cannot be attributed and stays under its old name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from harness.core.atomic import atomic_write
from harness.spec.run import ResolvedRun, device_type
from harness.core.errors import HarnessError, first_line
from harness.results.store import kernel_table_path
from harness.spec.model_ref import ResolvedModel
from harness.data.resolve import model_digest, resolve_model
from harness.spec.schema import COLUMN_NAMES, SCHEMA_VERSION
from harness.results.store import result_files, write_rows
from harness.results.values import missing as _missing

# Settings added to ResolvedRun while schema 1 was current, with the behaviour of the code
# before each existed (kernel profiling came with its flag; the spine's schedule was linear).
ABSENT_IN_SCHEMA_1: dict[str, Any] = {
    "kernel_profile": False,
    "lr_scheduler": "linear",
    "gradient_accumulation_steps": 1,
    "gradient_checkpointing": False,
    "max_train_tokens": None,
    "packing": False,
    "train_data": None,
    "num_fewshot": None,
    "max_new_tokens": None,
    "preset": None,
}
UNAVAILABLE = "unavailable"


def row_version(row: dict[str, Any]) -> int:
    value = row.get("schema_version")
    return 1 if _missing(value) else int(value)  # schema 1 was the first


def _schema_1_to_2(row: dict[str, Any]) -> dict[str, Any]:
    if _missing(row.get("config")):
        raise HarnessError("no config recorded")
    config = json.loads(row["config"])
    filled = {**ABSENT_IN_SCHEMA_1, **config}
    filled["method_versions"] = [1] * len(config.get("method_params") or [])
    device = None if _missing(row.get("device")) else str(row["device"])
    filled["device_type"] = device_type(device) if device else "unknown"
    try:
        if config["model_source"] == "path":  # a local folder was named by its path; now by its content
            filled["model_hub_id"] = resolve_model(config["model_location"]).hub_id
        model = ResolvedModel(config["model"], filled["model_hub_id"], config["model_location"], config["model_source"])
        filled["model_digest"] = model_digest(model)
    except (HarnessError, OSError):
        filled["model_digest"] = UNAVAILABLE
    run = ResolvedRun.model_validate(filled)
    upgraded = {
        **row,
        "schema_version": 2,
        "job_hash": run.job_hash,
        "config": run.model_dump_json(),
        "model_hub_id": run.model_hub_id,
        "model_digest": run.model_digest,
    }
    if _missing(row.get("identity_upgraded_from")):
        upgraded["identity_upgraded_from"] = row["job_hash"]
    return upgraded


# Schema version n -> the function taking a row of version n to version n + 1.
STEPS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _schema_1_to_2}
# The first schema version whose job_hash is the current identity (IDENTITY_VERSION of
# harness/spec/run.py): a later schema change that leaves job_hash alone does not re-key rows.
IDENTITY_SCHEMA = 2


def upgrade_row(row: dict[str, Any], to: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The row as the harness of schema version `to` (default: this one) writes it."""
    version = row_version(row)
    if version > SCHEMA_VERSION:
        raise HarnessError(
            f"schema version {version} is newer than this harness's ({SCHEMA_VERSION}); upgrade the harness"
        )
    while version < to:
        step = STEPS.get(version)
        if step is None:
            raise HarnessError(f"no upgrade from schema version {version} to {version + 1}")
        row = step(row)
        version += 1
    return row


def current_job_hash(row: dict[str, Any]) -> str:
    """The row's job hash under the current identity: its own when current, else as
    `harness store upgrade` would re-key it; `job:<hash>` when it cannot be re-keyed."""
    if row_version(row) >= IDENTITY_SCHEMA:
        return row["job_hash"]
    try:
        return upgrade_row(row, to=IDENTITY_SCHEMA)["job_hash"]
    except (HarnessError, ValueError, KeyError, TypeError):
        return f"job:{row['job_hash']}"  # only the same old job can match it


@dataclass
class UpgradeSummary:
    rekeyed: int = 0  # rows given a new identity
    current: int = 0  # rows already current
    files_written: int = 0
    models_unavailable: int = 0
    device_unknown: int = 0
    skipped: list[str] = field(default_factory=list)  # "file: why", left as they are
    dropped_columns: set[str] = field(default_factory=set)  # not in the schema: no reader sees them
    kernel_tables_moved: int = 0
    kernel_tables_left: list[str] = field(default_factory=list)

    def lines(self, dry_run: bool) -> list[str]:
        would = "would be " if dry_run else ""
        lines = [
            f"{self.rekeyed} rows {would}re-keyed to schema {SCHEMA_VERSION} ({self.files_written} files), "
            f"{self.current} already current"
        ]
        if self.models_unavailable:
            lines.append(
                f"{self.models_unavailable} rows name a model that is gone: model_digest 'unavailable', "
                f"they match no new run"
            )
        if self.device_unknown:
            lines.append(f"{self.device_unknown} rows record no device: device_type 'unknown', they match no new run")
        if self.dropped_columns:
            lines.append(f"columns not in the schema {would}dropped: {', '.join(sorted(self.dropped_columns))}")
        if self.kernel_tables_moved:
            lines.append(f"{self.kernel_tables_moved} kernel tables {would}moved to the run that wrote them")
        for path in self.kernel_tables_left:
            lines.append(
                f"kernel table {path} left as it is: no single run of its old job hash wrote it "
                f"(CPU and GPU runs shared the hash, or no row says it was profiled)"
            )
        lines += [f"skipped {entry}" for entry in self.skipped]
        return lines


@dataclass
class _FilePlan:
    path: Path
    rows: list[tuple[Path, dict[str, Any]]]  # new file, upgraded row


def _store_root(results_dir: Path, path: Path) -> Path:
    """The store a row file belongs to: <store>/<suite>/<task>/<file> (a leaderboard history
    holds one store per night below its root)."""
    root = path.parents[2] if len(path.relative_to(results_dir).parts) >= 3 else results_dir
    return root


def upgrade_store(results_dir: str | os.PathLike, dry_run: bool = False) -> UpgradeSummary:
    results = Path(results_dir)
    if not results.is_dir():
        raise HarnessError(f"--results {str(results)!r} is not a folder")
    summary, plans = UpgradeSummary(), []
    runs: dict[tuple[Path, str], list[dict[str, Any]]] = {}  # (store root, old hash) -> its rows upgraded
    for path in result_files(results):
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - a broken file is named and left alone, the rest goes on
            summary.skipped.append(f"{path}: unreadable ({first_line(exc)})")
            continue
        newest = max((row_version(r) for r in rows), default=SCHEMA_VERSION)
        if newest > SCHEMA_VERSION:  # refused before anything is written
            raise HarnessError(
                f"{path} has schema version {newest}, newer than this harness's ({SCHEMA_VERSION}); "
                f"upgrade the harness instead"
            )
        if all(row_version(r) == SCHEMA_VERSION for r in rows):
            summary.current += len(rows)
            continue
        try:
            upgraded = [upgrade_row(r) for r in rows]
        except HarnessError as exc:
            summary.skipped.append(f"{path}: {exc}")
            continue
        except (ValueError, KeyError, TypeError) as exc:
            summary.skipped.append(f"{path}: config not re-keyable ({first_line(exc)})")
            continue
        plan = _FilePlan(path, [])
        for old, new in zip(rows, upgraded):
            if row_version(old) == SCHEMA_VERSION:
                summary.current += 1
            else:
                summary.rekeyed += 1
                summary.models_unavailable += new.get("model_digest") == UNAVAILABLE
                summary.device_unknown += json.loads(new["config"])["device_type"] == "unknown"
                runs.setdefault((_store_root(results, path), old["job_hash"]), []).append(new)
            summary.dropped_columns |= set(new) - set(COLUMN_NAMES)
            clean = {k: v for k, v in new.items() if k in COLUMN_NAMES}
            plan.rows.append((path.parent / f"{clean['job_hash']}-{clean['run_id']}.parquet", clean))
        plans.append(plan)
    summary.files_written = sum(len(p.rows) for p in plans)
    if not dry_run:
        for plan in plans:
            for target, row in plan.rows:
                write_rows([row], target)
            if plan.path not in {target for target, _ in plan.rows}:
                plan.path.unlink()  # only now: every row it held is in its new file
    _move_kernel_tables(runs, summary, dry_run)
    return summary


def _move_kernel_tables(
    runs: dict[tuple[Path, str], list[dict[str, Any]]], summary: UpgradeSummary, dry_run: bool
) -> None:
    """A schema-1 kernel table, `_kernels/<old hash>.parquet`, was rewritten by every profiled run
    of its hash: it is the latest one's. It becomes that run's table when the old hash is one job
    now; when it is several (CPU and GPU runs), which device the last writer had is not known."""
    for (root, old), rows in sorted(runs.items(), key=lambda item: (str(item[0][0]), item[0][1])):
        legacy = root / "_kernels" / f"{old}.parquet"
        if not legacy.is_file():
            continue
        if len({r["job_hash"] for r in rows}) > 1:
            summary.kernel_tables_left.append(str(legacy))
            continue
        profiled = [r for r in rows if r.get("status") == "ok" and json.loads(r["config"]).get("kernel_profile")]
        if not profiled:
            summary.kernel_tables_left.append(str(legacy))
            continue
        writer = max(profiled, key=lambda r: (r["created_at"], r["run_id"]))
        summary.kernel_tables_moved += 1
        if dry_run:
            continue
        try:
            table = pq.read_table(legacy)
        except Exception as exc:  # noqa: BLE001 - a broken side table is named, not fatal
            summary.skipped.append(f"{legacy}: unreadable ({first_line(exc)})")
            summary.kernel_tables_moved -= 1
            continue
        for name, value in (("job_hash", writer["job_hash"]), ("run_id", writer["run_id"])):
            column = pa.array([value] * table.num_rows, pa.string())
            table = (
                table.set_column(table.column_names.index(name), name, column)
                if name in table.column_names
                else table.append_column(name, column)
            )
        with atomic_write(kernel_table_path(str(root), writer["job_hash"], writer["run_id"])) as f:
            pq.write_table(table, f)
        legacy.unlink()
