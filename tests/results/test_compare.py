"""`compare_stores`: two result stores matched by job identity, regressions beyond tolerance."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from harness.core.errors import HarnessError
from harness.results.compare import REGRESSION, compare_stores
from tests.support import DEVICE, MODEL, run_row, store


def found(comparison):
    return {(c.kind, c.run, c.column) for c in comparison.changes}


def test_reports_exactly_the_lowered_accuracy_and_the_doubled_latency(tmp_path):
    methods = ["lora:r=8", "bitfit", "full"]
    base = store(tmp_path / "base", *(run_row(m, seed) for m in methods for seed in (0, 1)))
    later = datetime(2026, 1, 3, tzinfo=timezone.utc)
    new_rows = []
    for m in methods:
        for seed in (0, 1):
            row = run_row(m, seed, created_at=later)
            if m == "lora:r=8":  # both seeds: the configuration's mean drops
                row["score"] = 0.80
            if (m, seed) == ("bitfit", 1):
                row.update(latency_bs1_p50_ms=20.0, latency_bs1_p90_ms=20.5)
            new_rows.append(row)
    comparison = compare_stores(base, store(tmp_path / "new", *new_rows))

    assert found(comparison) == {
        (REGRESSION, f"glue/sst2 lora:r=8 {MODEL} seeds 0,1", "score"),
        (REGRESSION, f"glue/sst2 bitfit {MODEL} 1", "latency_bs1_p50_ms"),
    }
    score = next(c for c in comparison.regressions if c.column == "score")
    assert (score.base, score.new) == pytest.approx((0.90, 0.80))
    latency = next(c for c in comparison.regressions if c.column.startswith("latency"))
    assert (latency.base, latency.new, latency.relative) == (10.0, 20.0, 1.0)
    assert comparison.compared == 6
    table = comparison.table()
    assert table.splitlines()[-1] == "2 regressions, 0 improvements, 6 runs compared"
    assert "lora:r=8" in table and "+100.0%" in table
    frame = comparison.to_frame()
    assert list(frame["kind"]) == [REGRESSION, REGRESSION]
    assert set(frame["column"]) == {"score", "latency_bs1_p50_ms"}


def test_identical_stores_have_no_changes(tmp_path):
    rows = [run_row("lora:r=8"), run_row("bitfit"), run_row("full", ttft_bs1_p50_ms=5.0)]
    comparison = compare_stores(store(tmp_path / "base", *rows), store(tmp_path / "new", *rows))
    assert comparison.changes == [] and comparison.regressions == []
    assert comparison.compared == 3
    assert comparison.table() == "0 regressions, 0 improvements, 3 runs compared"


def test_score_changes_within_tolerance_are_not_reported(tmp_path):
    base = store(tmp_path / "base", run_row("lora:r=8", score=0.900), run_row("bitfit", score=0.800))
    new = store(tmp_path / "new", run_row("lora:r=8", score=0.896), run_row("bitfit", score=0.820))
    comparison = compare_stores(base, new, metric_tolerance=0.005)
    assert found(comparison) == {("improvement", f"glue/sst2 bitfit {MODEL} 0", "score")}
    assert compare_stores(base, new, metric_tolerance=0.003).regressions[0].column == "score"


@pytest.mark.parametrize("p90, regression", [(14.0, False), (None, True)])
def test_latency_rise_within_the_measured_spread_is_noise(tmp_path, p90, regression):
    # +15% on the median: beyond a 10% tolerance, but not beyond it plus a 4 ms p50-p90 spread.
    base = store(tmp_path / "base", run_row(latency_bs1_p50_ms=10.0, latency_bs1_p90_ms=p90 or 10.0))
    new = store(tmp_path / "new", run_row(latency_bs1_p50_ms=11.5, latency_bs1_p90_ms=p90 or 11.5))
    comparison = compare_stores(base, new, time_tolerance=0.10)
    assert found(comparison) == (
        {(REGRESSION, f"glue/sst2 lora:r=8 {MODEL} 0", "latency_bs1_p50_ms")} if regression else set()
    )


def test_costs_without_a_spread_use_the_relative_tolerance(tmp_path):
    base = store(tmp_path / "base", run_row(train_seconds=100.0, peak_memory_bytes=1000))
    new = store(tmp_path / "new", run_row(train_seconds=109.0, peak_memory_bytes=1200))
    assert found(compare_stores(base, new, time_tolerance=0.10)) == {
        (REGRESSION, f"glue/sst2 lora:r=8 {MODEL} 0", "peak_memory_bytes"),
    }


def test_hardware_costs_on_another_device_are_not_comparable(tmp_path):
    base = store(tmp_path / "base", run_row())
    new = store(
        tmp_path / "new",
        run_row(
            device_name="NVIDIA A100-SXM4-40GB", latency_bs1_p50_ms=20.0, latency_bs1_p90_ms=20.4, train_seconds=300.0
        ),
    )
    comparison = compare_stores(base, new)
    assert comparison.regressions == []
    [note] = comparison.changes
    assert note.kind == "info" and note.column == "device_name" and "not comparable (device differs)" in note.note


def test_exact_costs_regress_on_any_rise_whatever_the_device(tmp_path):
    base = store(tmp_path / "base", run_row())
    new = store(tmp_path / "new", run_row(device_name="other", trainable_params=600_001, model_bytes=437_000_000))
    comparison = compare_stores(base, new, time_tolerance=10.0)
    assert {(c.kind, c.column) for c in comparison.changes if c.kind != "info"} == {
        (REGRESSION, "trainable_params"),
        ("improvement", "model_bytes"),
    }


def test_run_missing_in_new_is_a_regression_and_a_new_run_is_information(tmp_path):
    base = store(tmp_path / "base", run_row("lora:r=8"), run_row("bitfit"), run_row("full"))
    new = store(
        tmp_path / "new",
        run_row("lora:r=8"),
        run_row("dora:r=8"),
        run_row("full", status="failed", score=None, error="RuntimeError: CUDA out of memory"),
    )
    comparison = compare_stores(base, new)
    assert found(comparison) == {
        (REGRESSION, f"glue/sst2 bitfit {MODEL} 0", "run"),
        (REGRESSION, f"glue/sst2 full {MODEL} 0", "run"),
        ("info", f"glue/sst2 dora:r=8 {MODEL} 0", "run"),
    }
    notes = {c.run.split()[1]: c.note for c in comparison.changes}
    assert notes == {
        "bitfit": "missing in new",
        "full": "failed in new: RuntimeError: CUDA out of memory",
        "dora:r=8": "new run",
    }
    assert comparison.compared == 1


def test_runs_match_across_versions_commits_and_paths(tmp_path):
    base = store(tmp_path / "base", run_row(git_commit="aaaaaaa"))
    elsewhere = dict(
        harness_version="0.5.0",
        results_dir="/ci/night-2/results",
        data_dir="/ci/mirror",
        model_location="/ci/mirror/models/bert",
        device="cuda:0",
    )
    new_row = run_row(config=elsewhere, git_commit="bbbbbbb-dirty", harness_version="0.5.0")
    comparison = compare_stores(base, store(tmp_path / "new", new_row))
    assert comparison.changes == [] and comparison.compared == 1
    # An identity setting does change the run: then it is a different experiment.
    other = compare_stores(base, store(tmp_path / "other", run_row(config={"lr": 1e-4})))
    assert {c.note for c in other.changes} == {"missing in new", "new run"}


def test_latest_run_of_one_identity_wins_within_a_store(tmp_path):
    day = datetime(2026, 1, 2, tzinfo=timezone.utc)
    base = store(tmp_path / "base", run_row(score=0.90))
    new = store(
        tmp_path / "new",
        run_row(score=0.80, created_at=day + timedelta(days=2)),
        run_row(score=0.70, created_at=day, config={"harness_version": "0.3.0"}),
    )
    [change] = compare_stores(base, new).changes
    assert (change.column, change.new) == ("score", 0.80)


def test_missing_folder_or_empty_store_is_bad_input(tmp_path):
    base = store(tmp_path / "base", run_row())
    with pytest.raises(HarnessError, match="no such folder"):
        compare_stores(base, tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="no results"):
        compare_stores(tmp_path / "empty", base)


def test_the_compare_command_exits_1_on_a_regression_and_0_on_identical_stores(tmp_path, capsys):
    from harness.cli import main

    rows = [run_row("lora:r=8"), run_row("bitfit")]
    base = store(tmp_path / "base", *rows)
    assert main(["compare", str(base), str(store(tmp_path / "same", *rows))]) == 0
    assert "0 regressions" in capsys.readouterr().out
    worse = store(tmp_path / "worse", run_row("lora:r=8", score=0.85), run_row("bitfit"))
    assert main(["compare", str(base), str(worse)]) == 1
    assert "1 regression" in capsys.readouterr().out
    assert main(["compare", str(base), str(tmp_path / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err


def _seeds(scores, **columns):
    return [run_row("lora:r=8", seed, score=score, **columns) for seed, score in enumerate(scores)]


def test_several_seeds_are_gated_on_their_mean_within_k_standard_errors(tmp_path):
    """Seed 0 and seed 2 each move by 0.01 (beyond a 0.005 tolerance), but the mean of three
    seeds moves by 0.0033, well inside 3 SE of the seeds' own changes (paired by seed): no
    change. A drop of the whole mean by 0.10 is one regression, of the configuration, not of
    each seed; every seed moved alike, so its SE is 0 and the tolerance decides."""
    base = store(tmp_path / "base", *_seeds([0.90, 0.92, 0.88]))
    noisy = store(tmp_path / "noisy", *_seeds([0.89, 0.93, 0.87]))
    assert compare_stores(base, noisy, metric_tolerance=0.005).changes == []
    worse = store(tmp_path / "worse", *_seeds([0.80, 0.82, 0.78]))
    [change] = compare_stores(base, worse, metric_tolerance=0.005, metric_k=3.0).changes
    assert (change.kind, change.column, change.run) == (REGRESSION, "score", f"glue/sst2 lora:r=8 {MODEL} seeds 0,1,2")
    assert (change.base, change.new) == pytest.approx((0.90, 0.80))
    assert "3 SE (0)" in change.note  # the per-seed changes are all -0.10
    # The band is k SE: with k small enough, the noisy night's 0.0033 is a change after all.
    assert compare_stores(base, noisy, metric_tolerance=0.0, metric_k=0.1).regressions[0].column == "score"
    # A single seed keeps the absolute tolerance (it has no spread to measure its noise by).
    one = compare_stores(store(tmp_path / "b1", *_seeds([0.90])), store(tmp_path / "n1", *_seeds([0.89])))
    assert [(c.kind, c.run) for c in one.changes] == [(REGRESSION, f"glue/sst2 lora:r=8 {MODEL} 0")]


def test_timings_from_a_shared_device_are_not_compared(tmp_path):
    base = store(tmp_path / "base", run_row(concurrent_jobs=1))
    new = store(
        tmp_path / "new",
        run_row(
            concurrent_jobs=4,
            train_seconds=300.0,
            latency_bs1_p50_ms=30.0,
            latency_bs1_p90_ms=31.0,
            peak_memory_bytes=6 * 2**30,
        ),
    )
    comparison = compare_stores(base, new)
    assert {(c.kind, c.column) for c in comparison.changes} == {
        ("info", "concurrent_jobs"),
        (REGRESSION, "peak_memory_bytes"),
    }  # memory is per process: still compared
    assert next(c for c in comparison.changes if c.column == "concurrent_jobs").note.startswith(
        "not compared: shared device"
    )
    alone = store(tmp_path / "alone", run_row(concurrent_jobs=1, train_seconds=300.0))
    assert {c.column for c in compare_stores(base, alone).regressions} == {"train_seconds"}


def test_device_dependent_exact_costs_are_compared_within_one_device_type(tmp_path):
    base = store(tmp_path / "base", run_row(device="cuda:0"))
    cpu = store(
        tmp_path / "cpu",
        run_row(
            device="cpu", device_name=DEVICE, flops_per_sample=1.5e10, model_bytes=800_000_000, trainable_params=600_001
        ),
    )
    changes = {(c.kind, c.column) for c in compare_stores(base, cpu).changes}
    assert changes == {("info", "device"), (REGRESSION, "trainable_params")}
    gpu = store(tmp_path / "gpu", run_row(device="cuda:1", flops_per_sample=3e10))
    assert {c.column for c in compare_stores(base, gpu).regressions} == {"flops_per_sample"}


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--metric-tolerance", "nan"),
        ("--metric-tolerance", "inf"),
        ("--time-tolerance", "-0.1"),
        ("--time-tolerance", "nan"),
        ("--metric-k", "inf"),
        ("--metric-k", "-1"),
    ],
)
def test_tolerances_must_be_finite_and_not_negative(tmp_path, capsys, flag, value):
    from harness.cli import main

    base = store(tmp_path / "base", run_row())
    assert main(["compare", str(base), str(base), f"{flag}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err
    with pytest.raises(HarnessError, match="finite"):
        compare_stores(base, base, **{flag[2:].replace("-", "_"): float(value)})


def _perplexity(scores, **columns):
    """Seeds of one configuration scored by a perplexity: lower is better."""
    return _seeds(scores, metric="word_perplexity", higher_is_better=False, **columns)


def test_a_rise_in_perplexity_is_the_regression_and_a_fall_the_improvement(tmp_path):
    base = store(tmp_path / "base", *_perplexity([20.0]))
    worse = compare_stores(base, store(tmp_path / "worse", *_perplexity([20.5])), metric_tolerance=0.1)
    [change] = worse.changes
    assert (change.kind, change.column, change.base, change.new) == (REGRESSION, "score", 20.0, 20.5)
    assert change.note == "word_perplexity up more than 0.1 (lower is better)"
    better = compare_stores(base, store(tmp_path / "better", *_perplexity([19.5])), metric_tolerance=0.1)
    assert [(c.kind, c.column) for c in better.changes] == [("improvement", "score")]
    # Within the tolerance either way: nothing.
    assert compare_stores(base, store(tmp_path / "same", *_perplexity([20.05])), metric_tolerance=0.1).changes == []


def test_the_seed_mean_of_a_perplexity_regresses_when_it_rises(tmp_path):
    """Every seed's perplexity rises by 1 (SE 0): one regression of the configuration; falls: an improvement."""
    base = store(tmp_path / "base", *_perplexity([20.0, 21.0, 22.0]))
    [change] = compare_stores(base, store(tmp_path / "worse", *_perplexity([21.0, 22.0, 23.0]))).changes
    assert (change.kind, change.run) == (REGRESSION, f"glue/sst2 lora:r=8 {MODEL} seeds 0,1,2")
    assert (change.base, change.new) == pytest.approx((21.0, 22.0))
    assert "mean of 3 seeds up 1" in change.note and change.note.endswith("(lower is better)")
    [change] = compare_stores(base, store(tmp_path / "better", *_perplexity([19.0, 20.0, 21.0]))).changes
    assert change.kind == "improvement"


def test_rows_without_a_direction_compare_as_higher_is_better(tmp_path):
    """Rows written before the column (null there) gate as before: a drop is the regression."""
    old = _seeds([0.90], higher_is_better=None)
    [change] = compare_stores(store(tmp_path / "base", *old), store(tmp_path / "new", *_seeds([0.80]))).changes
    assert (change.kind, change.note) == (REGRESSION, "accuracy down more than 0.005")
    rise = compare_stores(store(tmp_path / "b2", *old), store(tmp_path / "n2", *_seeds([0.95], higher_is_better=None)))
    assert [c.kind for c in rise.changes] == ["improvement"]


def test_rows_that_disagree_on_the_direction_are_not_compared(tmp_path):
    base = store(tmp_path / "base", *_seeds([0.90]))
    new = store(tmp_path / "new", *_seeds([0.50], higher_is_better=False))
    [change] = compare_stores(base, new).changes
    assert change.kind == "info" and "higher_is_better differs" in change.note
