"""`harness sweep`: validation before any job, resume after SIGKILL with exactly one row per
job, failures (raise, timeout, memory limit) recorded while the rest finishes, and the
store's reading rule (latest successful row of a job wins)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from harness.cli import main
from harness.store import latest_per_job, read_results, result_files


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tiny_sweep(tmp_path, tiny_model, tiny_glue, results, grid: str, extra: str = "") -> Path:
    return write_sweep(tmp_path / "sweep.yaml", f"""\
results: {results}
data_dir: {tiny_glue}
defaults:
  model: {tiny_model}
  max_steps: 2
  batch_size: 16
  latency_repeats: 1
  max_eval_samples: 8
grid:
{grid}
{extra}""")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


# Validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("grid, extra, expected", [
    ("  suite: glue\n  task: sst2\n  method: [lora, lorra]\n", "",
     r"sweep.yaml:12: grid.method\[1\]: unknown method 'lorra'"),
    ("  suite: glue\n  task: sst2\n  method: lora\n  seed: [0, abc]\n", "",
     r"sweep.yaml:13: grid.seed\[1\]: Input should be a valid integer"),
    ("  suite: glue\n  task: sst2\n  method: lora\n  sead: 1\n", "",
     r"sweep.yaml:13: grid.sead: unknown setting"),
    ("  suite: glue\n  task: sst2\n  method: lora\n", "resources:\n  timout: 5\n",
     r"sweep.yaml:15: resources.timout: unknown key"),
    ("  suite: glue\n  task: sst2\n  method: lora\n", "runs:\n  - {suite: glue, task: rte, method: dora, resources: {retries: -1}}\n",
     r"sweep.yaml:15: runs\[0\].resources.retries: Input should be greater than or equal to 0"),
])
def test_a_bad_sweep_file_is_refused_naming_file_line_and_key(tmp_path, tiny_model, tiny_glue, results_dir, capsys,
                                                             grid, extra, expected):
    import re

    sweep = tiny_sweep(tmp_path, tiny_model, tiny_glue, results_dir, grid, extra)
    assert main(["sweep", str(sweep)]) == 2
    assert re.search(expected, _one_line_error(capsys))
    assert not results_dir.exists()  # nothing ran


def test_dry_run_lists_jobs_and_what_is_done(tmp_path, tiny_model, tiny_glue, results_dir, capsys):
    sweep = tiny_sweep(tmp_path, tiny_model, tiny_glue, results_dir,
                       "  suite: glue\n  task: [sst2, cola]\n  method: none\n  seed: [0, 1]\n")
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 jobs: 4 todo; 4 to run" in out and out.count("glue/") == 4
    assert not results_dir.exists()


# Resume ------------------------------------------------------------------------------------


def _sweep_process(sweep: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", str(sweep), "--quiet", "--max-parallel", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_sweep_killed_with_sigkill_resumes_with_exactly_one_row_per_job(tmp_path, tiny_model, tiny_glue, results_dir):
    sweep = tiny_sweep(tmp_path, tiny_model, tiny_glue, results_dir,
                       "  suite: glue\n  task: [sst2, cola]\n  method: none\n  seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]\n")
    first = _sweep_process(sweep)
    deadline = time.time() + 300
    while len(result_files(results_dir)) < 5 and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
    assert first.poll() is None, first.stdout.read()  # still mid-sweep
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = {p.name for p in result_files(results_dir)}
    assert 5 <= len(before) < 24
    time.sleep(1)  # the killed sweep's workers die with it (no orphan finishes a job later)
    assert {p.name for p in result_files(results_dir)} == before

    second = _sweep_process(sweep)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    rows = read_results(results_dir)
    assert len(rows) == 24 and rows["job_hash"].nunique() == 24 and (rows["status"] == "ok").all()
    assert before <= {p.name for p in result_files(results_dir)}  # finished jobs were not run again
    for path in results_dir.rglob("*.parquet"):  # every Parquet file reads; temporaries are dot-files
        if not path.name.startswith("."):
            pq.read_table(path)
    rerun = _sweep_process(sweep, "--dry-run")
    assert "24 jobs: 24 ok; 0 to run" in rerun.communicate(timeout=300)[0]


def test_ctrl_c_stops_the_sweep_and_its_jobs_cleanly(tmp_path, tiny_model, tiny_glue, results_dir):
    sweep = tiny_sweep(tmp_path, tiny_model, tiny_glue, results_dir,
                       "  suite: glue\n  task: sst2\n  method: none\n  seed: [0, 1, 2, 3, 4, 5]\n")
    proc = _sweep_process(sweep)
    deadline = time.time() + 300
    while not result_files(results_dir) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in out
    written = {p.name for p in result_files(results_dir)}
    time.sleep(2)
    assert {p.name for p in result_files(results_dir)} == written and 1 <= len(written) < 6  # its jobs were killed
    assert (read_results(results_dir)["status"] == "ok").all()  # and not recorded as failed: a resume runs them
    assert not [p for p in results_dir.rglob(".*") if p.is_file()]  # no temporary left behind


# Failures ----------------------------------------------------------------------------------


def test_raising_timed_out_and_memory_capped_jobs_leave_failed_rows_while_the_rest_finish(
        tmp_path, tiny_model, tiny_glue, results_dir, capsys):
    from datasets import Dataset

    from tests.conftest import make_tiny_glue

    # A split whose labels exceed the model's two classes: training raises (an IndexError in the loss).
    broken = make_tiny_glue(tmp_path / "broken")
    folder = broken / "nyu-mll" / "glue" / "sst2"
    Dataset.from_dict({"sentence": ["good film"] * 32, "label": [7] * 32, "idx": list(range(32))}).to_parquet(
        str(folder / "train-00000-of-00001.parquet"))
    sweep = write_sweep(tmp_path / "sweep.yaml", f"""\
results: {results_dir}
data_dir: {tiny_glue}
defaults: {{model: {tiny_model}, max_steps: 2, batch_size: 16, latency_repeats: 1, max_eval_samples: 8, suite: glue, task: sst2}}
runs:
  - {{method: none, seed: 0}}
  - {{method: lora, seed: 1, data_dir: {broken}}}
  - {{method: full, seed: 2, max_steps: 1000000, resources: {{timeout: 25}}}}
  - {{method: none, seed: 3, resources: {{memory_limit_gb: 0.05}}}}
  - {{method: none, seed: 4}}
""")
    assert main(["sweep", str(sweep), "--quiet", "--max-parallel", "2"]) == 1
    capsys.readouterr()
    rows = read_results(results_dir).set_index("seed").sort_index()
    assert len(rows) == 5 and rows["job_hash"].nunique() == 5
    assert list(rows["status"]) == ["ok", "failed", "failed", "failed", "ok"]
    assert "Target 7 is out of bounds" in rows.loc[1, "error"] or "IndexError" in rows.loc[1, "error"]
    assert rows.loc[2, "error"].startswith("timed out after 25 s")
    assert "memory" in rows.loc[3, "error"].lower()


# Reading ------------------------------------------------------------------------------------


def test_the_latest_successful_row_of_a_job_wins_whatever_the_file_order():
    t = lambda s: pd.Timestamp(s, tz="UTC")  # noqa: E731
    df = pd.DataFrame([
        {"job_hash": "a", "status": "failed", "created_at": t("2026-01-03"), "run_id": "1"},
        {"job_hash": "a", "status": "ok", "created_at": t("2026-01-01"), "run_id": "2"},
        {"job_hash": "a", "status": "ok", "created_at": t("2026-01-02"), "run_id": "3"},
        {"job_hash": "b", "status": "failed", "created_at": t("2026-01-01"), "run_id": "4"},
        {"job_hash": "b", "status": "failed", "created_at": t("2026-01-05"), "run_id": "5"},
    ])
    for order in (df, df.iloc[::-1], df.sample(frac=1, random_state=0)):
        latest = latest_per_job(order).set_index("job_hash")
        assert latest.loc["a", "run_id"] == "3" and latest.loc["b", "run_id"] == "5"


def test_slots_per_gpu_and_on_cpu():
    from harness.sweep import device_slots, parse_devices

    assert device_slots(parse_devices("0,1"), 2, None) == ["0", "0", "1", "1"]
    assert device_slots(parse_devices("cpu"), 1, None) == [None]  # one CPU job at a time by default
    assert device_slots(None, 1, 3) == [None, None, None]
    assert device_slots(["0", "1"], 1, 3) == ["0", "1", "0"]


def test_only_jobs_without_a_row_run_unless_failed_ones_are_asked_for():
    from types import SimpleNamespace

    from harness.sweep import SweepPlan

    jobs = [SimpleNamespace(job_hash=h) for h in ("done", "broke", "new")]
    plan = SweepPlan(jobs, {"done": "ok", "broke": "failed"})
    assert [j.job_hash for j in plan.todo(rerun_failed=False)] == ["new"]
    assert [j.job_hash for j in plan.todo(rerun_failed=True)] == ["broke", "new"]
