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
from harness.results.store import latest_per_job, read_results, result_files


def write_sweep(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def tiny_sweep(tmp_path, tiny_model, tiny_glue, results, grid: str, extra: str = "") -> Path:
    return write_sweep(
        tmp_path / "sweep.yaml",
        f"""\
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
{extra}""",
    )


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


# Validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "grid, extra, expected",
    [
        (
            "  suite: glue\n  task: sst2\n  method: [lora, lorra]\n",
            "",
            r"sweep.yaml:12: grid.method\[1\]: unknown method 'lorra'",
        ),
        (
            "  suite: glue\n  task: sst2\n  method: lora\n  seed: [0, abc]\n",
            "",
            r"sweep.yaml:13: grid.seed\[1\]: Input should be a valid integer",
        ),
        ("  suite: glue\n  task: sst2\n  method: lora\n  sead: 1\n", "", r"sweep.yaml:13: grid.sead: unknown setting"),
        (
            "  suite: glue\n  task: sst2\n  method: lora\n",
            "resources:\n  timout: 5\n",
            r"sweep.yaml:15: resources.timout: unknown key",
        ),
        (
            "  suite: glue\n  task: sst2\n  method: lora\n",
            "runs:\n  - {suite: glue, task: rte, method: dora, resources: {retries: -1}}\n",
            r"sweep.yaml:15: runs\[0\].resources.retries: Input should be greater than or equal to 0",
        ),
    ],
)
def test_a_bad_sweep_file_is_refused_naming_file_line_and_key(
    tmp_path, tiny_model, tiny_glue, results_dir, capsys, grid, extra, expected
):
    import re

    sweep = tiny_sweep(tmp_path, tiny_model, tiny_glue, results_dir, grid, extra)
    assert main(["sweep", str(sweep)]) == 2
    assert re.search(expected, _one_line_error(capsys))
    assert not results_dir.exists()  # nothing ran


def test_dry_run_lists_jobs_and_what_is_done(tmp_path, tiny_model, tiny_glue, results_dir, capsys):
    sweep = tiny_sweep(
        tmp_path,
        tiny_model,
        tiny_glue,
        results_dir,
        "  suite: glue\n  task: [sst2, cola]\n  method: none\n  seed: [0, 1]\n",
    )
    assert main(["sweep", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "4 jobs: 4 todo; 4 to run" in out and out.count("glue/") == 4
    assert not results_dir.exists()


# Resume ------------------------------------------------------------------------------------


def _sweep_process(sweep: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "sweep", str(sweep), "--quiet", "--max-parallel", "2", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_sweep_killed_with_sigkill_resumes_with_exactly_one_row_per_job(tmp_path, tiny_model, tiny_glue, results_dir):
    sweep = tiny_sweep(
        tmp_path,
        tiny_model,
        tiny_glue,
        results_dir,
        "  suite: glue\n  task: [sst2, cola]\n  method: none\n  seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]\n",
    )
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
    sweep = tiny_sweep(
        tmp_path,
        tiny_model,
        tiny_glue,
        results_dir,
        "  suite: glue\n  task: sst2\n  method: none\n  seed: [0, 1, 2, 3, 4, 5]\n",
    )
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
    tmp_path, tiny_model, tiny_glue, results_dir, capsys
):
    from datasets import Dataset

    from tests.support import make_tiny_glue

    # A split whose labels exceed the model's two classes: training raises (an IndexError in the loss).
    broken = make_tiny_glue(tmp_path / "broken")
    folder = broken / "nyu-mll" / "glue" / "sst2"
    Dataset.from_dict({"sentence": ["good film"] * 32, "label": [7] * 32, "idx": list(range(32))}).to_parquet(
        str(folder / "train-00000-of-00001.parquet")
    )
    sweep = write_sweep(
        tmp_path / "sweep.yaml",
        f"""\
results: {results_dir}
data_dir: {tiny_glue}
defaults: {{model: {tiny_model}, max_steps: 2, batch_size: 16, latency_repeats: 1, max_eval_samples: 8, suite: glue, task: sst2}}
runs:
  - {{method: none, seed: 0}}
  - {{method: lora, seed: 1, data_dir: {broken}}}
  - {{method: full, seed: 2, max_steps: 1000000, resources: {{timeout: 25}}}}
  - {{method: none, seed: 4}}
""",
    )
    assert main(["sweep", str(sweep), "--quiet", "--max-parallel", "2"]) == 1
    capsys.readouterr()
    rows = read_results(results_dir).set_index("seed").sort_index()
    assert len(rows) == 4 and rows["job_hash"].nunique() == 4
    assert list(rows["status"]) == ["ok", "failed", "failed", "ok"]
    assert any(
        text in rows.loc[1, "error"] for text in ("label 7 is outside", "Target 7 is out of bounds", "IndexError")
    )
    assert rows.loc[2, "error"].startswith("timed out after 25 s")
    # Two CPU slots: every row, the parent's timed-out one included, says its timings were shared.
    assert list(rows["concurrent_jobs"]) == [2, 2, 2, 2]


def _worker_data_segment() -> int:
    """What a worker's data segment holds once its imports are done (what the cap counts from)."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import harness.execution.worker as w, harness.engine.resolve, harness.engine.job; print(w.data_segment_bytes())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out)


def test_a_job_that_allocates_past_its_memory_limit_fails_out_of_memory_while_training(
    tmp_path, tiny_model, tiny_glue, results_dir, capsys
):
    from tests.support import make_tiny_bert

    # ~50 M parameters: full fine-tuning holds weights, gradients and two Adam moments,
    # about 800 MB beyond the imports; the tiny model's job needs under 400 MB.
    wide = make_tiny_bert(
        tmp_path / "wide", hidden_size=1024, intermediate_size=4096, num_attention_heads=4, num_hidden_layers=4
    )
    imports = _worker_data_segment()
    cap = (imports + 640 * 2**20) / 2**30
    below = (imports - 64 * 2**20) / 2**30
    sweep = write_sweep(
        tmp_path / "sweep.yaml",
        f"""\
results: {results_dir}
data_dir: {tiny_glue}
defaults: {{model: {tiny_model}, max_steps: 2, batch_size: 16, latency_repeats: 1, max_eval_samples: 8, suite: glue, task: sst2,
           kernel_profile: false}}
runs:
  - {{method: none, seed: 0, resources: {{memory_limit_gb: {cap}}}}}
  - {{method: full, seed: 1, model: {wide}, resources: {{memory_limit_gb: {cap}}}}}
  - {{method: none, seed: 2, resources: {{memory_limit_gb: {below}}}}}
""",
    )
    assert main(["sweep", str(sweep), "--quiet"]) == 1
    capsys.readouterr()
    rows = read_results(results_dir).set_index("seed").sort_index()
    assert list(rows["status"]) == ["ok", "failed", "failed"]  # the cap leaves a job that fits alone
    assert rows.loc[1, "error"].startswith("out of memory:")
    assert (
        "harness/engine/loop.py" in rows.loc[1, "traceback"] or "backward" in rows.loc[1, "traceback"]
    )  # it ran, then ran out
    assert rows.loc[2, "error"].startswith("bad input: memory_limit_gb") and "after its imports" in rows.loc[2, "error"]


# Reading ------------------------------------------------------------------------------------


def test_the_latest_successful_row_of_a_job_wins_whatever_the_file_order():
    t = lambda s: pd.Timestamp(s, tz="UTC")  # noqa: E731
    df = pd.DataFrame(
        [
            {"job_hash": "a", "status": "failed", "created_at": t("2026-01-03"), "run_id": "1"},
            {"job_hash": "a", "status": "ok", "created_at": t("2026-01-01"), "run_id": "2"},
            {"job_hash": "a", "status": "ok", "created_at": t("2026-01-02"), "run_id": "3"},
            {"job_hash": "b", "status": "failed", "created_at": t("2026-01-01"), "run_id": "4"},
            {"job_hash": "b", "status": "failed", "created_at": t("2026-01-05"), "run_id": "5"},
        ]
    )
    for order in (df, df.iloc[::-1], df.sample(frac=1, random_state=0)):
        latest = latest_per_job(order).set_index("job_hash")
        assert latest.loc["a", "run_id"] == "3" and latest.loc["b", "run_id"] == "5"


def test_slots_per_gpu_and_on_cpu():
    from harness.execution.local import device_slots, parse_devices

    assert device_slots(parse_devices("0,1"), 2, None) == ["0", "0", "1", "1"]
    assert device_slots(parse_devices("cpu"), 1, None) == [None]  # one CPU job at a time by default
    assert device_slots(None, 1, 3) == [None, None, None]
    assert device_slots(["0", "1"], 1, 3) == ["0", "1", "0"]


def test_only_jobs_without_a_row_run_unless_failed_ones_are_asked_for():
    from types import SimpleNamespace

    from harness.execution.plan import SweepPlan

    jobs = [SimpleNamespace(job_hash=h) for h in ("done", "broke", "new")]
    plan = SweepPlan(jobs, {"done": "ok", "broke": "failed"})
    assert [j.job_hash for j in plan.todo(rerun_failed=False)] == ["new"]
    assert [j.job_hash for j in plan.todo(rerun_failed=True)] == ["broke", "new"]


# Claims: two sweeps on one store --------------------------------------------------------------


def _jobs(results_dir, tiny_model, tiny_glue, seeds):
    from harness.engine.resolve import resolve
    from harness.execution.plan import SweepJob
    from harness.spec.run import RunSpec
    from harness.spec.sweep_file import Resources

    jobs = []
    for seed in seeds:
        spec = RunSpec(
            suite="glue",
            task="sst2",
            method="none",
            model=str(tiny_model),
            data_dir=str(tiny_glue),
            max_eval_samples=8,
            latency_repeats=1,
            seed=seed,
            results_dir=str(results_dir),
            kernel_profile=False,
        )
        jobs.append(SweepJob(spec, resolve(spec)[0], Resources()))
    return jobs


def test_two_sweeps_on_one_store_run_each_job_once(results_dir, tiny_model, tiny_glue):
    import threading

    from harness.execution.local import run_local

    jobs = _jobs(results_dir, tiny_model, tiny_glue, [0, 1, 2])
    outcomes = {}

    def sweep(name, order):
        outcomes[name] = run_local(order, [None])

    threads = [threading.Thread(target=sweep, args=("a", jobs)), threading.Thread(target=sweep, args=("b", jobs[::-1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = read_results(results_dir)
    assert len(rows) == 3 and sorted(rows["job_hash"]) == sorted(j.job_hash for j in jobs)
    assert (rows["status"] == "ok").all() and (rows["concurrent_jobs"] == 1).all()
    for job in jobs:
        statuses = sorted(o.status for name in "ab" for o in outcomes[name] if o.job_hash == job.job_hash)
        assert statuses == ["elsewhere", "ok"]
    assert not list((results_dir / "_claims").glob("*.claim"))  # every claim released


def test_a_claim_is_taken_over_only_from_a_holder_that_is_gone(tmp_path):
    import json as json_
    import socket

    from harness.execution import claims

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def held_by(pid, host=socket.gethostname(), started=None, beat_age=0.0):
        path = claims.claim_path(tmp_path, "job")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json_.dumps({"pid": pid, "host": host, "time": started or time.time(), "token": "t"}))
        os.utime(path, (time.time() - beat_age, time.time() - beat_age))

    held_by(os.getpid())
    assert claims.try_claim(tmp_path, "job", timeout=60) is None  # live here
    held_by(dead.pid)
    taken = claims.try_claim(tmp_path, "job", timeout=60)
    assert taken is not None  # dead here
    assert json_.loads(taken.path.read_text())["pid"] == os.getpid()
    taken.release()
    assert not taken.path.exists()
    held_by(1, host="elsewhere")
    assert claims.try_claim(tmp_path, "job", timeout=None) is None  # another host, heart still beating
    held_by(1, host="elsewhere", beat_age=claims.HEARTBEAT_STALE_SECONDS + 5)
    assert claims.try_claim(tmp_path, "job") is not None  # that host stopped beating
    held_by(1, host="elsewhere", started=time.time() - 100 - claims.TIMEOUT_GRACE_SECONDS - 5)
    assert not claims.is_stale(claims.claim_path(tmp_path, "job"), timeout=1000)
    assert claims.try_claim(tmp_path, "job", timeout=100) is not None  # older than its job's timeout


# The parent's failure rows -----------------------------------------------------------------------


def test_the_parent_names_the_slots_gpu_on_a_failed_row_without_touching_cuda(
    results_dir, tiny_model, tiny_glue, monkeypatch
):
    import torch

    from harness.execution import isolated

    def no_cuda(*args, **kwargs):
        raise AssertionError("the sweep parent must not initialise CUDA")

    [job] = _jobs(results_dir, tiny_model, tiny_glue, [0])  # planning resolves the device type first
    for name in ("get_device_name", "is_available", "init", "device_count"):
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    monkeypatch.setattr(isolated, "_gpu_names", lambda: {"0": "NVIDIA First", "3": "NVIDIA Fake Slot GPU"})
    outcome = isolated.execute_isolated(job.spec, job.run, timeout=0.5, cuda_devices="3", concurrent_jobs=2)
    assert outcome.status == "failed" and outcome.error.startswith("timed out")
    row = read_results(results_dir).iloc[0]
    assert (row["device"], row["device_name"], row["concurrent_jobs"]) == ("cuda", "NVIDIA Fake Slot GPU", 2)
    # A CPU job on a GPU slot stays a CPU job.
    assert isolated.watcher_environment("cpu", "3")["device"] == "cpu"
    assert isolated.watcher_environment("cuda:1", "5,3")["device_name"] == "NVIDIA Fake Slot GPU"


def test_a_retry_is_not_mistaken_for_another_sweeps_run(results_dir, tiny_model, tiny_glue):
    from harness.execution.local import run_local
    from harness.spec.sweep_file import Resources

    [job] = _jobs(results_dir, tiny_model, tiny_glue, [0])
    job.resources = Resources(retries=1, timeout=0.5)  # every attempt times out
    [outcome] = run_local([job], [None])
    assert outcome.status == "failed"
    assert list(read_results(results_dir)["status"]) == ["failed", "failed"]  # the attempt and its retry
