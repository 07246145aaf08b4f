"""Reading a store survives bad files (each skipped with one warning naming it, and counted),
keeps an index that is never stale, reads only what planning needs, removes the temporaries
of killed writers (never a live writer's), and is queryable by DuckDB as the README says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.core import atomic
from harness.results import store
from harness.spec.schema import SCHEMA_VERSION, to_table
from harness.results.store import INDEX_PATH, STATUS_COLUMNS, job_status, read_store, write_row
from tests.support import full_row

README = Path(__file__).resolve().parents[2] / "README.md"


def good_store(root: Path, n: int = 3) -> list[Path]:
    return [write_row(full_row(job_hash=f"j{i}", run_id=f"r{i}", score=i / 10), root) for i in range(n)]


def _zero_byte(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    buf = pa.BufferOutputStream()
    pq.write_table(to_table([full_row(job_hash="trunc", run_id="x")]), buf)
    raw = buf.getvalue().to_pybytes()
    path.write_bytes(raw[: len(raw) // 2])


def _foreign(path: Path) -> None:
    pq.write_table(pa.table({"phase": ["train"], "total_us": [1.0]}), path)


def _wrong_type_cast_would_fail(path: Path) -> None:
    table = to_table([full_row(job_hash="bad", run_id="b")])
    table = table.set_column(table.schema.get_field_index("score"), "score", pa.array(["high"]))
    pq.write_table(table, path)


def _wrong_type_cast_would_succeed(path: Path) -> None:
    # An integer job_hash would be cast to "123" silently: a misread, not a row.
    table = to_table([full_row(job_hash="bad", run_id="b")])
    table = table.set_column(table.schema.get_field_index("job_hash"), "job_hash", pa.array([123], pa.int64()))
    pq.write_table(table, path)


def _newer_schema(path: Path) -> None:
    pq.write_table(to_table([full_row(job_hash="future", run_id="f", schema_version=SCHEMA_VERSION + 1)]), path)


BAD_FILES = {
    "zero-byte": (_zero_byte, "unreadable Parquet"),
    "truncated": (_truncated, "unreadable Parquet"),
    "foreign": (_foreign, "not a result file"),
    "wrong type, cast fails": (_wrong_type_cast_would_fail, "wrong column type (score is string"),
    "wrong type, cast would succeed": (_wrong_type_cast_would_succeed, "wrong column type (job_hash is int64"),
    "newer schema version": (_newer_schema, f"schema version {SCHEMA_VERSION + 1}"),
}


def _bad_store(root: Path, kind: str, where: str = "glue/sst2") -> Path:
    good_store(root)
    bad = root / where / "zz-bad.parquet"
    bad.parent.mkdir(parents=True, exist_ok=True)
    BAD_FILES[kind][0](bad)
    return bad


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("harness: warning: skipped")]


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_a_bad_file_is_skipped_with_one_warning_naming_it_and_counted(tmp_path, capsys, kind):
    bad = _bad_store(tmp_path, kind)
    read = read_store(tmp_path)
    assert sorted(read.frame["job_hash"]) == ["j0", "j1", "j2"]
    assert read.frame.set_index("job_hash")["score"].to_dict() == {"j0": 0.0, "j1": 0.1, "j2": 0.2}
    assert read.skipped_count == 1 and read.skipped[0][0] == bad
    assert read.frame.attrs["skipped_files"] == 1
    [line] = _warnings(capsys.readouterr().err)
    assert str(bad) in line and BAD_FILES[kind][1] in line
    # Never folded into the index: skipped and counted again, but named once per process.
    again = read_store(tmp_path)
    assert sorted(again.frame["job_hash"]) == ["j0", "j1", "j2"] and again.skipped_count == 1
    assert not _warnings(capsys.readouterr().err)


def test_several_bad_files_among_many_are_isolated(tmp_path, capsys):
    good_store(tmp_path, 20)
    for i, kind in enumerate(["zero-byte", "foreign", "wrong type, cast fails"]):
        BAD_FILES[kind][0](tmp_path / "glue" / "sst2" / f"j{i}x-bad.parquet")
    read = read_store(tmp_path)
    assert sorted(read.frame["job_hash"]) == sorted(f"j{i}" for i in range(20))
    assert read.skipped_count == 3 and len(_warnings(capsys.readouterr().err)) == 3


def test_planning_skips_a_bad_file_and_reads_only_status_columns(tmp_path, capsys, monkeypatch):
    _bad_store(tmp_path, "zero-byte")
    seen = []
    real = store._scan_all
    monkeypatch.setattr(store, "_scan_all", lambda files, columns: seen.append(columns) or real(files, columns))
    assert job_status(tmp_path) == {"j0": "x", "j1": "x", "j2": "x"}
    assert seen and all(set(c) == set(STATUS_COLUMNS) | {"schema_version", "identity_upgraded_from"} for c in seen)
    assert len(_warnings(capsys.readouterr().err)) == 1


def test_index_serves_unchanged_files_and_rereads_changed_ones(tmp_path):
    paths = good_store(tmp_path, 4)
    cold = read_store(tmp_path).frame
    assert (tmp_path / INDEX_PATH).is_file()
    warm = read_store(tmp_path).frame
    assert (
        warm.sort_values("job_hash").reset_index(drop=True).equals(cold.sort_values("job_hash").reset_index(drop=True))
    )
    # A file rewritten in place (a new inode and mtime) is read again, not served from the index.
    write_row(full_row(job_hash="j1", run_id="r1", score=0.99), tmp_path)
    paths[2].unlink()
    write_row(full_row(job_hash="j9", run_id="r9", score=0.5), tmp_path)
    scores = read_store(tmp_path).frame.set_index("job_hash")["score"].to_dict()
    assert scores == {"j0": 0.0, "j1": 0.99, "j3": 0.3, "j9": 0.5}


def test_index_from_another_schema_is_ignored(tmp_path):
    good_store(tmp_path, 2)
    read_store(tmp_path)
    index = tmp_path / INDEX_PATH
    table = pq.read_table(index)
    # The same rows with a wrong score, under another fingerprint: must not be used.
    table = table.set_column(table.schema.get_field_index("score"), "score", pa.array([9.0, 9.0]))
    pq.write_table(table.replace_schema_metadata({"harness_index": "something-else"}), index)
    assert sorted(read_store(tmp_path).frame["score"]) == [0.0, 0.1]


def test_a_read_only_store_is_read_without_an_index(tmp_path):
    good_store(tmp_path, 2)
    os.chmod(tmp_path, 0o555)
    try:
        if os.access(tmp_path, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        assert len(read_store(tmp_path).frame) == 2 and not (tmp_path / INDEX_PATH).exists()
    finally:
        os.chmod(tmp_path, 0o755)


# Temporaries of killed writers ----------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temporary(folder: Path, pid: int, host: str | None = None, age: float = 3600) -> Path:
    path = folder / f".abc-r1.parquet.{pid}@{host or atomic._host()}.k2j4.tmp"
    path.write_bytes(b"half")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_stale_temporaries_of_dead_writers_are_removed_on_read_live_ones_kept(tmp_path):
    good_store(tmp_path, 1)
    folder = tmp_path / "glue" / "sst2"
    dead_old = _temporary(folder, _dead_pid())
    dead_young = _temporary(folder, _dead_pid(), age=5)
    live_old = _temporary(folder, os.getpid())
    other_host = _temporary(folder, _dead_pid(), host="elsewhere")
    other_host_ancient = _temporary(folder, _dead_pid(), host="elsewhere", age=2 * 86400)
    kernels = tmp_path / "_kernels"
    kernels.mkdir()
    dead_in_side_table = _temporary(kernels, _dead_pid())
    assert len(read_store(tmp_path).frame) == 1
    assert not dead_old.exists() and not dead_in_side_table.exists() and not other_host_ancient.exists()
    assert dead_young.exists() and live_old.exists() and other_host.exists()


def test_atomic_write_names_its_writer_and_fsyncs_the_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.path.isdir(f"/proc/self/fd/{fd}")) or real(fd))
    names = []
    real_mkstemp = atomic.tempfile.mkstemp
    monkeypatch.setattr(atomic.tempfile, "mkstemp", lambda **kw: names.append(kw["prefix"]) or real_mkstemp(**kw))
    with atomic.atomic_write(tmp_path / "x.bin") as f:
        f.write(b"1")
    assert (tmp_path / "x.bin").read_bytes() == b"1"
    assert synced == [False, True]  # the file, then its folder after the rename
    assert names == [f".x.bin.{os.getpid()}@{atomic._host()}."]


# The CLI ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zero-byte", "foreign", "wrong type, cast fails"])
def test_report_skips_a_bad_file_anywhere_with_a_warning(tmp_path, capsys, kind):
    from harness.cli import main

    results = tmp_path / "results"
    bad = _bad_store(results, kind, where="other/deep/er")
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "site")]) == 0
    captured = capsys.readouterr()
    [line] = _warnings(captured.err)
    assert str(bad) in line and "Traceback" not in captured.err
    assert "(3 runs)" in captured.out


def test_sweep_dry_run_skips_a_bad_file_with_a_warning(tmp_path, capsys, tiny_model, tiny_glue):
    from harness.cli import main

    results = tmp_path / "results"
    bad = _bad_store(results, "truncated")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"results: {results}\ndata_dir: {tiny_glue}\ndefaults:\n  model: {tiny_model}\n"
        "grid:\n  suite: glue\n  task: sst2\n  method: none\n  seed: [0, 1]\n"
    )
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    captured = capsys.readouterr()
    [line] = _warnings(captured.err)
    assert str(bad) in line and "2 jobs: 2 todo" in captured.out


# DuckDB -------------------------------------------------------------------------------------


def _readme_query() -> str:
    match = re.search(r'`duckdb -c "(select [^"]+)"`', README.read_text())
    assert match, "the README's DuckDB example is gone"
    return match.group(1)


def test_the_readmes_duckdb_query_reads_a_real_store(tmp_path, monkeypatch):
    duckdb = pytest.importorskip("duckdb")
    from harness.measure.kernels import KernelProfile
    from harness.engine.profiling import write_kernel_tables

    results = tmp_path / "results"
    write_row(full_row(job_hash="a", run_id="r1", method="lora", score=0.5), results)
    write_row(full_row(job_hash="b", run_id="r2", method="dora", score=0.75, suite="cifar", task="cifar10"), results)
    # Side tables as the harness writes them: kernel profiles, the read index, a benchmark log.
    profile = KernelProfile.__new__(KernelProfile)
    monkeypatch.setattr(
        KernelProfile,
        "to_table",
        lambda self, job, phase: pa.table(
            {"job_hash": [job], "phase": [phase], "name": ["aten::mm"], "total_us": [1.0]}
        ),
    )
    write_kernel_tables(str(results), "a", "r1", {"train": profile})
    store.append_records(results / "_benchmarks" / "method_step.parquet", [{"method": "lora", "step_ms_p50": 1.0}])
    read_store(results)
    assert (results / INDEX_PATH).is_file()
    monkeypatch.chdir(tmp_path)
    rows = sorted(duckdb.sql(_readme_query()).fetchall())
    assert rows == [("dora", 0.75), ("lora", 0.5)]
    if shutil.which("duckdb"):
        out = subprocess.run(
            ["duckdb", "-csv", "-c", _readme_query()], capture_output=True, text=True, check=True
        ).stdout
        assert sorted(out.split()[1:]) == ["dora,0.75", "lora,0.5"]


def test_a_writer_killed_mid_write_leaves_a_temporary_its_killer_removes(tmp_path):
    """SIGKILL cannot be caught, so the writer's temporary stays; whoever killed it knows the pid
    and removes that writer's temporaries at once (a live writer's are never touched)."""
    import subprocess
    import sys

    code = (
        "import sys, time; from harness.core.atomic import atomic_write\n"
        f"with atomic_write({str(tmp_path / 'row.parquet')!r}) as f:\n"
        "    f.write(b'half'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    writer.kill()
    writer.wait()
    with atomic.atomic_write(tmp_path / "other.parquet") as live:  # this process's own, still open
        live.write(b"x")
        left = [p.name for p in tmp_path.glob(".*.tmp")]
        assert len(left) == 2
        removed = atomic.remove_temporaries_of(tmp_path, {writer.pid, os.getpid()})
        assert [p.name for p in removed] == [n for n in left if f".{writer.pid}@" in n]
        assert len(list(tmp_path.glob(".*.tmp"))) == 1  # the live writer's
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "row.parquet").exists()
