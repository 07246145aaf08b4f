"""`harness tune`: equal trials per method, picked on the selection split, finals on the reported
split; resumable; every bad input one line before any trial runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from harness.engine.job import run_job
from harness.execution.isolated import Outcome
from harness.execution.tune import Trial, TuningGroup, pick, run_tuning
from harness.results.store import read_results
from harness.spec.sweep_file import load_sweep
from harness.spec.tuning import lr_grid, search_points


def test_the_rate_grid_is_half_decades_around_the_default():
    assert lr_grid(5e-4, 4) == [1.58e-4, 5e-4, 1.58e-3, 5e-3]
    assert lr_grid(1e-3, 5) == [1e-4, 3.16e-4, 1e-3, 3.16e-3, 1e-2]
    assert lr_grid(5e-5, 1) == [5e-5]


def test_every_space_gives_the_same_number_of_trials():
    assert [p["lr"] for p in search_points(1e-3, 3, {})] == [3.16e-4, 1e-3, 3.16e-3]
    wide = search_points(1e-3, 3, {"r": [4, 8, 16]}, seed=0)
    assert len(wide) == 3 and all(set(p) == {"lr", "r"} for p in wide)
    assert wide == search_points(1e-3, 3, {"r": [4, 8, 16]}, seed=0)  # a fixed draw
    assert len({(p["lr"], p["r"]) for p in wide}) == 3
    assert search_points(1e-3, 2, {"lr": [1e-4, 1e-3]}) == [{"lr": 1e-4}, {"lr": 1e-3}]
    with pytest.raises(ValueError, match="2 points, fewer than the 3 trials"):
        search_points(1e-3, 3, {"lr": [1e-4, 1e-3]})
    with pytest.raises(ValueError, match="r: an empty list"):
        search_points(1e-3, 3, {"r": []})


def _group(points, default=1e-3) -> TuningGroup:
    class Job:
        def __init__(self, i):
            self.job_hash = f"h{i}"

    trials = [Trial(p, Job(i)) for i, p in enumerate(points)]
    return TuningGroup("g", "label", None, default, 10, trials, "results")


def test_the_pick_is_the_best_selection_score_ties_to_the_default_then_the_lower_rate():
    group = _group([{"lr": 1e-4}, {"lr": 1e-3}, {"lr": 1e-2}])
    assert pick(group, {"h0": 0.7, "h1": 0.8, "h2": 0.9}) == {"lr": 1e-2}
    assert pick(group, {"h0": 0.9, "h1": 0.9, "h2": 0.9}) == {"lr": 1e-3}
    assert pick(group, {"h0": 0.9, "h1": 0.5, "h2": 0.9}) == {"lr": 1e-4}
    assert pick(group, {"h0": 0.9, "h1": None, "h2": 0.5}) == {"lr": 1e-4}  # a failed trial is out
    assert pick(group, {"h0": 0.9, "h1": 0.8}) is None  # not every trial has a row yet


def test_the_pick_of_a_lower_is_better_score_is_the_lowest_with_the_same_tie_breaks():
    group = _group([{"lr": 1e-4}, {"lr": 1e-3}, {"lr": 1e-2}])
    perplexities = {"h0": 30.0, "h1": 25.0, "h2": 40.0}
    assert pick(group, perplexities, higher_is_better=False) == {"lr": 1e-3}
    assert pick(group, perplexities) == {"lr": 1e-2}  # read as higher-is-better: the worst
    assert pick(group, {"h0": 20.0, "h1": 20.0, "h2": 20.0}, higher_is_better=False) == {"lr": 1e-3}
    assert pick(group, {"h0": 20.0, "h1": 30.0, "h2": 20.0}, higher_is_better=False) == {"lr": 1e-4}
    assert pick(group, {"h0": 20.0, "h1": None, "h2": 10.0}, higher_is_better=False) == {"lr": 1e-2}


def test_a_groups_direction_comes_from_its_trials_rows(tmp_path):
    from harness.execution.tune import trial_directions
    from harness.results.store import write_row
    from tests.support import full_row

    perplexity, accuracy, old = _group([{"lr": 1e-4}]), _group([{"lr": 1e-3}]), _group([{"lr": 1e-2}])
    for group, job, direction in ((perplexity, "p0", False), (accuracy, "a0", True), (old, "o0", None)):
        group.id, group.results_dir = job, str(tmp_path)
        group.trials[0].job.job_hash = job
        write_row(full_row(job_hash=job, run_id="r1", status="ok", higher_is_better=direction), tmp_path)
    assert trial_directions([perplexity, accuracy, old]) == {"p0": False, "a0": True, "o0": True}


class InProcess:
    """An executor running each job in this process (the local one starts a process per job)."""

    output_on_stdout = False

    def __init__(self):
        self.ran: list[list[str]] = []

    def run(self, jobs, resources, *, quiet=False):
        self.ran.append([j.job_hash for j in jobs])
        outcomes = []
        for job in jobs:
            started = time.perf_counter()
            result = run_job(job.spec, show_progress=False)
            outcomes.append(Outcome(job.job_hash, result.row["status"], time.perf_counter() - started))
        return outcomes


def _tune_file(tmp_path: Path, tiny_model, tiny_glue, tune=None, grid=None, defaults=None) -> Path:
    config = {
        "results": str(tmp_path / "results"),
        "data_dir": str(tiny_glue),
        "defaults": {
            "max_train_samples": 32,
            "max_steps": 2,
            "batch_size": 8,
            "latency_repeats": 1,
            "kernel_profile": False,
            **(defaults or {}),
        },
        "grid": grid or {"suite": "glue", "task": "sst2", "model": str(tiny_model), "method": ["bitfit"]},
        "tune": tune if tune is not None else {"trials": 2, "seeds": [0, 1], "selection_samples": 24},
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_tuning_picks_on_the_selection_split_and_runs_the_pick_on_each_seed(tiny_model, tiny_glue, tmp_path):
    loaded = load_sweep(_tune_file(tmp_path, tiny_model, tiny_glue))
    executor = InProcess()
    done = run_tuning(loaded, executor, loaded.config.resources, report=lambda line: None)
    assert [len(batch) for batch in executor.ran] == [2, 2] and done.waiting == []
    rows = read_results(tmp_path / "results")
    trials, finals = rows[rows["tuning_role"] == "trial"], rows[rows["tuning_role"] == "final"]
    assert len(trials) == 2 and set(trials["eval_split"]) == {"selection"} and set(trials["seed"]) == {0}
    configs = [json.loads(c) for c in trials["config"]]
    assert sorted(c["lr"] for c in configs) == lr_grid(1e-3, 2)  # bitfit's default 1e-3 (Ben Zaken et al.)
    assert {c["head_lr"] for c in configs} == {4e-3} and {c["selection_samples"] for c in configs} == {24}
    # The pick is the trial with the best selection score, whatever the finals score on dev.
    best = trials.sort_values("score", ascending=False, kind="stable").iloc[0]
    ties = trials[trials["score"] == best["score"]]
    picked_lr = json.loads(best["config"])["lr"] if len(ties) == 1 else 1e-3  # a tie: the default's
    assert len(finals) == 2 and sorted(finals["seed"]) == [0, 1] and set(finals["eval_split"]) == {"validation"}
    assert {json.loads(c)["lr"] for c in finals["config"]} == {picked_lr}
    assert {json.loads(t)["lr"] for t in finals["tuned"]} == {picked_lr}
    assert set(rows["tuning_group"]) == {done.groups[0].id}
    record = json.loads((tmp_path / "results" / "_tuning" / f"{done.groups[0].id}.json").read_text())
    assert record["picked"] == {"lr": picked_lr} and len(record["trials"]) == 2
    assert {t["job_hash"]: t["selection_score"] for t in record["trials"]} == dict(
        zip(trials["job_hash"], trials["score"])
    )
    assert sorted(f["job_hash"] for f in record["finals"]) == sorted(finals["job_hash"])
    # Running the file again runs nothing: every trial and final is done.
    again = InProcess()
    run_tuning(load_sweep(tmp_path / "tune.yaml"), again, loaded.config.resources, report=lambda line: None)
    assert again.ran == []
    # A third seed extends the group: the same trials, one more final.
    more = _tune_file(tmp_path, tiny_model, tiny_glue, tune={"trials": 2, "seeds": [0, 1, 2], "selection_samples": 24})
    third = InProcess()
    extended = run_tuning(load_sweep(more), third, loaded.config.resources, report=lambda line: None)
    assert [len(b) for b in third.ran] == [1] and extended.groups[0].id == done.groups[0].id


def test_a_planning_executor_leaves_the_pick_for_the_next_run(tiny_model, tiny_glue, tmp_path):
    class Planner(InProcess):
        def run(self, jobs, resources, *, quiet=False):
            self.ran.append([j.job_hash for j in jobs])
            return [Outcome(j.job_hash, "planned", 0.0) for j in jobs]

    loaded = load_sweep(_tune_file(tmp_path, tiny_model, tiny_glue))
    done = run_tuning(loaded, Planner(), loaded.config.resources, report=lambda line: None)
    assert done.waiting == ["glue/sst2 bitfit " + str(tiny_model) + ": 2 of 2 trials have no successful row yet"]
    assert not (tmp_path / "results" / "_tuning").exists()


@pytest.mark.parametrize(
    "tune, grid, words",
    [
        ({"trials": 0}, None, "tune.trials: Input should be greater than 0"),
        ({"trials": 2, "space": {"bitfit": {"lr": []}}}, None, "tune.space.bitfit: lr: an empty list leaves nothing"),
        ({"trials": 2, "space": {"bitfit": {"bogus": [1, 2]}}}, None, "bogus"),
        ({"trials": 2, "space": {"lora": {"r": [4, 8]}}}, None, "no job of the file has method 'lora'"),
        ({"trials": 2, "selection_samples": 96}, None, "leaves nothing to train on"),
        ({"trials": 2, "selection_samples": 80}, None, "--max-train-samples 32 and --selection-samples 80 need 112"),
        ({"trials": 2}, {"method": ["none"]}, "trains nothing"),
        ({"trials": 2}, {"lr": [1e-3]}, "lr is set by tuning"),
        ({"trials": 2}, {"seed": [0, 1]}, "seed is set by tuning"),
        ({"trials": 5, "space": {"bitfit": {"lr": [1e-3, 1e-2]}}}, None, "2 points, fewer than the 5 trials"),
    ],
)
def test_bad_tuning_input_is_one_line_before_any_trial(tiny_model, tiny_glue, tmp_path, capsys, tune, grid, words):
    from harness.cli import main

    base = {"suite": "glue", "task": "sst2", "model": str(tiny_model), "method": ["bitfit"]}
    path = _tune_file(tmp_path, tiny_model, tiny_glue, tune=tune, grid={**base, **(grid or {})})
    assert main(["tune", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and str(path) in err[0], err
    assert not (tmp_path / "results").exists()


def test_a_file_without_a_tune_block_and_sweep_on_one_with_it_are_refused(tiny_model, tiny_glue, tmp_path, capsys):
    from harness.cli import main

    path = _tune_file(tmp_path, tiny_model, tiny_glue)
    assert main(["sweep", str(path), "--dry-run"]) == 2
    assert "has a `tune:` block: run it with `harness tune" in capsys.readouterr().err
    config = yaml.safe_load(path.read_text())
    del config["tune"]
    path.write_text(yaml.safe_dump(config))
    assert main(["tune", str(path)]) == 2
    assert "no `tune:` block" in capsys.readouterr().err


def test_the_dry_run_counts_the_trials_and_runs_nothing(tiny_model, tiny_glue, tmp_path, capsys):
    from harness.cli import main

    grid = {"suite": "glue", "task": "sst2", "model": str(tiny_model), "method": ["bitfit", "lora"]}
    path = _tune_file(tmp_path, tiny_model, tiny_glue, tune={"trials": 3, "selection_samples": 24}, grid=grid)
    assert main(["tune", str(path), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip() == "2 tuning groups x 3 trials = 6 trials: 0 done, 6 to run"
    assert not (tmp_path / "results").exists()
