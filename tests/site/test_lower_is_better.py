"""Pages of a task whose score is lower-is-better (a perplexity, `higher_is_better` False): the best
run, line and front are the lowest, every score label says so; a store without the column reads as
higher-is-better, as before the column existed."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness.core.errors import HarnessError
from harness.results.history import append_night, trend
from harness.results.predictions import write_predictions
from harness.results.stats import mean_ci
from harness.results.store import read_results, row_path, write_row
from harness.site.build import write_report
from harness.site.prepare import build_sections
from harness.site.trend import build_sections as trend_sections
from harness.spec.schema import to_table
from tests.support import report_row as _report_row
from tests.support import run_row, store

PPL = dict(metric="word_perplexity", higher_is_better=False)


def report_row(*args, metric="accuracy", higher_is_better=True, **columns):
    return {**_report_row(*args, **columns), "metric": metric, "higher_is_better": higher_is_better}


def _perplexity_rows():
    """Trainable parameters against perplexity: `small` is cheap and nearly as good as `full`;
    `mid` costs more than `small` and is worse, so it is off the front."""
    return [
        report_row("full", 12.0, 10**6, 900 * 2**20, 100.0, "a", **PPL),
        report_row("small", 14.0, 10**4, 500 * 2**20, 40.0, "b", **PPL),
        report_row("mid", 16.0, 10**5, 400 * 2**20, 30.0, "c", **PPL),
    ]


def _stars(figure) -> set[str]:
    return {t["name"] for t in figure["data"] if t["name"] != "Pareto front" and "star" in t["marker"]["symbol"]}


def test_runs_fronts_and_axes_of_a_perplexity_task(tmp_path):
    for row in _perplexity_rows():
        write_row(row, tmp_path)
    [section] = build_sections(read_results(tmp_path))
    assert section.higher_is_better is False
    assert [r["method"] for r in section.rows] == ["full", "small", "mid"]  # lowest first
    params, memory, time, _ = (p.figure for p in section.panels)
    # Parameters: full and small optimal, mid dominated by small (cheaper and lower).
    assert _stars(params) == {"full", "small"}
    # Memory and time: each cheaper run is worse, so all three are optimal.
    assert _stars(memory) == _stars(time) == {"full", "small", "mid"}
    assert params["layout"]["yaxis"]["title"]["text"] == "word_perplexity (lower is better)"
    front = section.panels[0].front
    assert "score (lower is better)" in front.labels
    assert [cells[0].text for _, cells in front.rows] == ["small", "full"]  # by cost


def test_the_leaderboard_ranks_the_lowest_mean_first_and_its_best_seed_is_the_lowest(tmp_path):
    steady = [10.0, 10.5, 11.0]  # mean 10.5
    lucky = [8.0, 14.0, 14.5]  # best 8.0, mean 12.17
    for seed in range(3):
        for lr, scores in ((1e-4, steady), (2e-3, lucky)):
            write_row(run_row("lora:r=8", seed, config={"lr": lr}, score=scores[seed], **PPL), tmp_path)
    [section] = build_sections(read_results(tmp_path))
    headers = section.leaderboard.labels
    mean, best = headers.index("mean ± 95% CI (n) (lower is better)"), headers.index("best seed")
    lines = [[c.text for c in cells] for _, cells in section.leaderboard.rows]
    settings = headers.index("settings")
    assert [line[settings] for line in lines] == ["lr=0.0001", "lr=0.002"]
    assert lines[0][mean] == str(mean_ci(steady))
    assert lines[1][best] == "8.0000"  # the lowest seed, not the highest (14.5)
    assert section.leaderboard.rows[0][0] == "best"
    # The best line's method links its best run: the lowest score of its seeds.
    link = section.leaderboard.rows[0][1][0].links[0][1]
    assert link == next(r["_page"] for r in section.rows if r["score"] == 10.0)


def _with_predictions(root, method, seed, losses, lr):
    """A run scored by a mean per-example loss (lower is better) with its per-example scores."""
    row = run_row(method, seed, config={"lr": lr}, score=float(np.mean(losses)), metric="nll", higher_is_better=False)
    write_row(row, root)
    records = [dict(split="validation", example_id=i, metric="nll", score=float(s)) for i, s in enumerate(losses)]
    write_predictions(root, row["job_hash"], row["run_id"], records)


def test_lines_are_tested_against_the_lowest_line(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(3):
        base = rng.random(200) + 1.0
        _with_predictions(tmp_path, "lora", seed, base, 1e-3)
        _with_predictions(tmp_path, "bitfit", seed, base + 0.5 + 0.01 * rng.random(200), 1e-3)
    [section] = build_sections(read_results(tmp_path), tmp_path)
    column = section.leaderboard.labels.index("vs best")
    (_, first), (_, second) = section.leaderboard.rows
    assert first[0].text == "lora" and first[column].text == "best"
    assert second[0].text == "bitfit" and second[column].text == ""
    assert second[column].title.startswith("significantly above the best line (lower is better)")


def test_the_report_pages_say_lower_is_better(tmp_path):
    results, out = tmp_path / "results", tmp_path / "site"
    for row in _perplexity_rows():
        write_row(row, results)
    write_report(results, out)
    assert "metric: word_perplexity (lower is better)" in (out / "index.html").read_text()
    pareto = next(out.glob("pareto-*.html")).read_text()
    assert "(lower is better)" in pareto
    run = (out / "run-ha-a.html").read_text()
    assert "<b>word_perplexity = 12.0000</b> <span" in run and "(lower is better)" in run


def test_pages_go_to_the_lowest_perplexities_past_the_limit(tmp_path):
    results, out = tmp_path / "results", tmp_path / "site"
    for i in range(8):
        write_row(report_row("lora", 10.0 + i, 10, 2**20, 1.0, f"lora{i}", seed=i, **PPL), results)
    write_report(results, out, run_pages_per_task=3)
    pages = {p.name for p in out.glob("run-*.html")}
    assert pages == {"run-hlora0-lora0.html", "run-hlora1-lora1.html", "run-hlora2-lora2.html"}


def test_a_store_without_the_column_ranks_higher_first_as_before(tmp_path):
    rows = [
        report_row("full", 0.90, 10**6, 900 * 2**20, 100.0, "a"),
        report_row("lora", 0.88, 10**4, 500 * 2**20, 40.0, "b"),
        report_row("bitfit", 0.80, 10**5, 400 * 2**20, 30.0, "c"),
    ]
    for row in rows:  # files of a harness before the column
        path = row_path(tmp_path, row)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(to_table([row]).drop_columns(["higher_is_better"]), path)
    [section] = build_sections(read_results(tmp_path))
    assert section.higher_is_better is True
    assert [r["method"] for r in section.rows] == ["full", "lora", "bitfit"]
    assert _stars(section.panels[0].figure) == {"full", "lora"}
    assert section.panels[0].figure["layout"]["yaxis"]["title"]["text"] == "accuracy"
    assert "score" in section.panels[0].front.labels
    assert "mean ± 95% CI (n)" in section.leaderboard.labels


def test_a_task_whose_rows_disagree_on_the_direction_is_refused(tmp_path):
    write_row(report_row("full", 12.0, 10**6, 2**20, 1.0, "a", **PPL), tmp_path)
    write_row(report_row("lora", 0.9, 10**4, 2**20, 1.0, "b"), tmp_path)
    with pytest.raises(HarnessError, match="glue/sst2: some rows say a higher score is better"):
        build_sections(read_results(tmp_path))


def test_the_nightly_page_lists_the_lowest_perplexity_first(tmp_path):
    day = datetime(2026, 1, 2, 3, tzinfo=timezone.utc)
    rows = [
        run_row("lora:r=8", 0, score=20.0, created_at=day, **PPL),
        run_row("bitfit", 0, score=15.0, created_at=day, **PPL),
        run_row("full", 0, score=None, created_at=day, status="failed", error="x", higher_is_better=None),
    ]
    history = tmp_path / "history"
    append_night(store(tmp_path / "night", *rows), history, "2026-01-02")
    frame = trend(history)
    direction = frame.set_index("method")["higher_is_better"]
    assert direction["bitfit"] is not None and not direction["bitfit"]
    [section] = trend_sections(frame)
    assert section.higher_is_better is False
    assert [r["method"] for r in section.rows] == ["bitfit", "lora:r=8", "full"]  # the failed one, no score, last
    assert section.figures[0]["layout"]["yaxis"]["title"]["text"] == "word_perplexity (lower is better)"
