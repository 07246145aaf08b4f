"""The result schema round-trips through Parquet; writes are atomic; old files still read."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.results.store import read_results, result_files, write_row
from harness.spec.schema import COLUMNS, SCHEMA, SCHEMA_VERSION, to_table
from tests.support import full_row


def test_every_column_is_documented_and_typed():
    assert len({c.name for c in COLUMNS}) == len(COLUMNS)
    for column in COLUMNS:
        assert isinstance(column.type, pa.DataType)
    assert SCHEMA.metadata[b"harness_schema_version"] == str(SCHEMA_VERSION).encode()


def test_row_round_trips_through_parquet(tmp_path):
    row = full_row(score=0.8125, error=None)
    path = write_row(row, tmp_path)
    assert path == tmp_path / "glue" / "sst2" / "abc-r1.parquet"
    table = pq.read_table(path)
    assert table.schema.equals(SCHEMA, check_metadata=False)
    back = table.to_pylist()[0]
    assert back == row
    assert table.schema.field("score").metadata[b"doc"].startswith(b"value of the primary metric")


def test_unknown_column_is_rejected():
    with pytest.raises(KeyError, match="not in the schema"):
        to_table([full_row(surprise=1)])


def test_write_leaves_no_temporary_files_and_readers_skip_them(tmp_path):
    write_row(full_row(), tmp_path)
    (tmp_path / "glue" / "sst2" / ".abc-r2.parquet.123.tmp").write_bytes(b"half a file")
    assert [p.name for p in result_files(tmp_path)] == ["abc-r1.parquet"]
    assert len(read_results(tmp_path)) == 1


def test_older_files_missing_columns_read_with_nulls(tmp_path):
    old = to_table([full_row()]).drop_columns(["latency_timer", "host"])
    (tmp_path / "glue" / "sst2").mkdir(parents=True)
    pq.write_table(old, tmp_path / "glue" / "sst2" / "old.parquet")
    write_row(full_row(run_id="r2"), tmp_path)
    df = read_results(tmp_path)
    assert len(df) == 2 and df["latency_timer"].isna().sum() == 1


def test_higher_is_better_is_a_boolean_beside_the_score_and_null_in_older_files(tmp_path):
    names = [c.name for c in COLUMNS]
    assert names.index("higher_is_better") == names.index("score") + 1
    assert SCHEMA.field("higher_is_better").type == pa.bool_()
    assert b"higher is better" not in SCHEMA.field("score").metadata[b"doc"].replace(b"higher_is_better", b"")
    old = to_table([full_row()]).drop_columns(["higher_is_better"])
    (tmp_path / "glue" / "sst2").mkdir(parents=True)
    pq.write_table(old, tmp_path / "glue" / "sst2" / "old.parquet")
    write_row(full_row(run_id="r2", higher_is_better=False), tmp_path)
    df = read_results(tmp_path).sort_values("run_id")
    assert [None if v is None else bool(v) for v in df["higher_is_better"]] == [None, False]


def test_a_rows_direction_is_higher_unless_it_says_otherwise():
    from harness.core.errors import HarnessError
    from harness.results.values import higher_is_better, score_direction

    assert [higher_is_better(v) for v in (None, float("nan"), True, False)] == [True, True, True, False]
    assert score_direction([]) is True and score_direction([None, True]) is True
    assert score_direction([False, False]) is False
    with pytest.raises(HarnessError, match="glue/sst2: some rows say a higher score is better"):
        score_direction([False, None], "glue/sst2")


def test_empty_store_reads_as_empty_frame_with_all_columns(tmp_path):
    df = read_results(tmp_path)
    assert len(df) == 0 and list(df.columns) == [c.name for c in COLUMNS]


def test_written_files_are_readable_by_others(tmp_path):
    import os
    import stat

    path = write_row(full_row(), tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_nothing(tmp_path):
    from harness.core.atomic import atomic_write

    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "x.parquet") as f:
            f.write(b"partial")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
