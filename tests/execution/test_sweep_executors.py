"""The Ray and Slurm executors run the same jobs as the local one: the same job hashes, the
same scores (CPU, fixed seeds), one ok row per job; and what each adds on top of placing
jobs (Ray: rows brought back without a shared store, the driver's env, retries)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from harness.engine.resolve import resolve
from harness.execution.local import run_local
from harness.execution.plan import SweepJob
from harness.execution.ray import run_ray
from harness.execution.slurm import run_slurm
from harness.execution.worker import MEMORY_LIMIT_ENV
from harness.results.store import latest_per_job, read_results
from harness.spec.run import RunSpec
from harness.spec.sweep_file import Resources

SEEDS = (0, 1)


def tiny_jobs(
    model: Path, mirror: Path, results: Path, seeds=SEEDS, resources: Resources | None = None
) -> list[SweepJob]:
    resources = resources or Resources()
    jobs = []
    for seed in seeds:
        spec = RunSpec(
            suite="glue",
            task="sst2",
            method="lora",
            model=str(model),
            data_dir=str(mirror),
            results_dir=str(results),
            max_steps=2,
            batch_size=16,
            latency_repeats=2,
            seed=seed,
        )
        jobs.append(SweepJob(spec, resolve(spec)[0], resources))
    return jobs


def rows_by_hash(results: Path) -> pd.DataFrame:
    return latest_per_job(read_results(results)).set_index("job_hash")


def assert_same_results(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert set(got.index) == set(expected.index)
    assert (got["status"] == "ok").all()
    for job_hash, row in expected.iterrows():
        assert got.loc[job_hash, "score"] == row["score"]
        assert json.loads(got.loc[job_hash, "metrics"]) == json.loads(row["metrics"])


@pytest.fixture(scope="module")
def local_rows(tiny_model, tiny_glue, tmp_path_factory) -> pd.DataFrame:
    """The reference: the jobs through the local executor, one slot."""
    results = tmp_path_factory.mktemp("local-results")
    outcomes = run_local(tiny_jobs(tiny_model, tiny_glue, results), slots=[None])
    assert [o.status for o in outcomes] == ["ok"] * len(SEEDS)
    rows = rows_by_hash(results)
    assert len(rows) == len(SEEDS) and (rows["status"] == "ok").all()
    return rows


@pytest.fixture(scope="module")
def ray_local():
    """A Ray instance of this process's own, on loopback, for the module."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        object_store_memory=100 * 2**20,
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


def test_ray_runs_the_same_jobs_as_local(ray_local, local_rows, tiny_model, tiny_glue, tmp_path):
    results = tmp_path / "results"
    outcomes = run_ray(tiny_jobs(tiny_model, tiny_glue, results), Resources())
    assert sorted(o.status for o in outcomes) == ["ok"] * len(SEEDS)
    assert {o.job_hash for o in outcomes} == set(local_rows.index)
    assert_same_results(rows_by_hash(results), local_rows)


def test_ray_without_shared_store_the_driver_writes_the_rows(ray_local, local_rows, tiny_model, tiny_glue, tmp_path):
    results = tmp_path / "results"
    jobs = tiny_jobs(tiny_model, tiny_glue, results, seeds=SEEDS[:1])
    outcomes = run_ray(jobs, Resources(), shared_store=False)
    assert [o.status for o in outcomes] == ["ok"]
    rows = rows_by_hash(results)
    assert_same_results(rows, local_rows.loc[[jobs[0].job_hash]])
    # The row names the real store, not the node's temporary one, and the job's log came back too.
    assert json.loads(rows.iloc[0]["config"])["results_dir"] == str(results)
    assert (results / "_logs" / f"{jobs[0].job_hash}.log").is_file()


def test_ray_tasks_see_the_drivers_harness_env_and_failed_jobs_are_retried(
    ray_local, tiny_model, tiny_glue, tmp_path, monkeypatch
):
    # Set after Ray started, so its workers have it only if each task carries it: a data limit
    # below what a worker holds after its imports makes every attempt of the job fail.
    monkeypatch.setenv(MEMORY_LIMIT_ENV, str(64 * 2**20))
    results = tmp_path / "results"
    jobs = tiny_jobs(tiny_model, tiny_glue, results, seeds=SEEDS[:1], resources=Resources(retries=1))
    outcomes = run_ray(jobs, Resources())
    assert [(o.job_hash, o.status) for o in outcomes] == [(jobs[0].job_hash, "failed")]
    rows = read_results(results)
    assert list(rows["status"]) == ["failed", "failed"]  # the first attempt and its retry, one row each


def test_slurm_array_runs_the_same_jobs_as_local(local_rows, tiny_model, tiny_glue, tmp_path):
    pytest.importorskip("submitit")
    results = tmp_path / "results"
    outcomes = run_slurm(
        tiny_jobs(tiny_model, tiny_glue, results, resources=Resources(timeout=600)),
        Resources(),
        folder=str(tmp_path / "slurm"),
        cluster="local",
    )
    assert sorted(o.status for o in outcomes) == ["ok"] * len(SEEDS)
    rows = read_results(results)
    assert len(rows) == len(SEEDS)  # one row per job
    assert_same_results(rows_by_hash(results), local_rows)


def test_a_lost_ray_task_is_recorded_without_the_drivers_device(tiny_model, tiny_glue, tmp_path, monkeypatch):
    """The driver writes the row of a task lost on some node: its device type, not the driver's GPU or host."""
    import torch

    from harness.engine.resolve import resolve
    from harness.execution.plan import SweepJob
    from harness.execution.ray import _lost
    from harness.results.store import read_results
    from harness.spec.run import RunSpec
    from harness.spec.sweep_file import Resources

    monkeypatch.setattr(
        torch.cuda, "is_available", lambda: (_ for _ in ()).throw(AssertionError("driver touched CUDA"))
    )
    spec = RunSpec(
        suite="glue",
        task="sst2",
        method="lora:r=4",
        model=str(tiny_model),
        data_dir=str(tiny_glue),
        device="cpu",
        results_dir=str(tmp_path / "r"),
    )
    run = resolve(spec)[0]
    outcome = _lost(SweepJob(spec, run, Resources()), RuntimeError("node died"))
    [row] = read_results(tmp_path / "r").to_dict("records")
    assert outcome.status == "failed" and row["error"] == "Ray task lost: node died"
    assert row["device"] == "cpu" and pd.isna(row["host"]) and pd.isna(row["device_name"])


def test_a_job_at_device_auto_is_keyed_by_the_device_its_executor_gives_it(tiny_model, tiny_glue, tmp_path):
    """Planned on a machine without a GPU, a job at --device auto that a cluster runs on a GPU
    gets the hash its row will have (cuda), so a resumed sweep finds it done."""
    from harness.execution.plan import pin_auto_device

    [job] = tiny_jobs(tiny_model, tiny_glue, tmp_path / "r", seeds=(0,))
    assert job.spec.device == "auto" and job.run.device_type == "cpu"
    pinned = pin_auto_device(job, "cuda")
    on_gpu = resolve(job.spec.model_copy(update={"device": "cuda"}))[0]
    assert pinned.job_hash == on_gpu.job_hash != job.job_hash and pinned.run.device_type == "cuda"
    assert pin_auto_device(job, "cpu") is job
    explicit = SweepJob(job.spec.model_copy(update={"device": "cpu"}), job.run, job.resources)
    assert pin_auto_device(explicit, "cuda") is explicit  # a device the user named is kept
