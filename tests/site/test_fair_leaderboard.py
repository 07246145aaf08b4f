"""The report under the fair-comparison protocol (`harness tune`): trials (scored on the selection
split) only in a task's tuning table, finals as "tuned" lines with what was picked, and every line
marked against the best one by the paired test of `harness compare --versus`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.cli import main
from harness.results.paired import holm, paired_difference
from harness.results.predictions import write_predictions
from harness.results.store import read_results, row_path, write_row
from harness.results.versus import configurations, number, p_text, unpairable, versus_store
from harness.site.build import write_report
from harness.site.prepare import build_sections
from tests.support import run_row

N = 200
SPLIT = "train: 500 held out (seed 0)"
PROTOCOL = {"selection_samples": 500, "head_lr": 1e-3}  # what tune gives every method alike


def planted(seed: int, p: float) -> np.ndarray:
    return (np.random.default_rng(seed).random(N) < p).astype(float)


def write_run(root, method, seed, scores=None, *, lr, group=None, role=None, tuned=None, score=None, **config):
    """One ok row (its score the mean of `scores` when given) and, with `scores`, its predictions."""
    if group is not None:
        config = {**PROTOCOL, "tuning_group": group, **config}
        if role == "trial":
            config["evaluate_on"] = "selection"
        if tuned is not None:
            config["tuned"] = tuned
    row = run_row(
        method,
        seed,
        config={"lr": lr, **config},
        score=float(np.mean(scores)) if scores is not None else score,
        eval_split="selection" if role == "trial" else "validation",
        tuning_group=group,
        tuning_role=role,
        tuned=None if tuned is None else json.dumps(tuned),
        selection_split=SPLIT if group is not None else None,
    )
    write_row(row, root)
    if scores is not None:
        records = [
            dict(split="validation", example_id=i, metric="accuracy", score=float(s), prediction=1.0, reference=1.0)
            for i, s in enumerate(scores)
        ]
        write_predictions(root, row["job_hash"], row["run_id"], records)
    return row


def flipped(scores: np.ndarray, down: int, up: int) -> np.ndarray:
    """(seeds, examples) scores with the same few examples flipped in every seed: `down` that all
    seeds got right made wrong, `up` that all got wrong made right (a method a hair below)."""
    out = scores.copy()
    out[:, np.flatnonzero(scores.all(axis=0))[:down]] = 0.0
    out[:, np.flatnonzero((scores == 0).all(axis=0))[:up]] = 1.0
    return out


@pytest.fixture()
def tuned_store(tmp_path):
    """lora and bitfit: trials (one seed, scored on the selection split) and three finals each;
    full: three finals much worse than lora's; dora: finals without predictions; lora at its
    defaults, a plain run held out nothing."""
    root = tmp_path / "store"
    trials = {
        "lora": [(1e-4, 0.95), (3e-4, 0.97), (1e-3, 0.96)],  # above every final: on a leaderboard they would top it
        "bitfit": [(1e-3, 0.94), (1e-2, 0.96)],
    }
    rows = {"trials": []}
    for method, grid in trials.items():
        for lr, score in grid:
            rows["trials"].append(write_run(root, method, 0, lr=lr, group=f"g-{method}", role="trial", score=score))
    lora = np.vstack([planted(10 + seed, 0.75) for seed in range(3)])
    arrays = {"lora": lora, "bitfit": flipped(lora, 3, 1), "full": np.vstack([planted(20 + s, 0.4) for s in range(3)])}
    for seed in range(3):
        write_run(root, "lora", seed, arrays["lora"][seed], lr=3e-4, group="g-lora", role="final", tuned={"lr": 3e-4})
        write_run(
            root, "bitfit", seed, arrays["bitfit"][seed], lr=1e-2, group="g-bitfit", role="final", tuned={"lr": 1e-2}
        )
        write_run(root, "full", seed, arrays["full"][seed], lr=2e-5, group="g-full", role="final", tuned={"lr": 2e-5})
        write_run(root, "dora", seed, lr=1e-3, group="g-dora", role="final", tuned={"lr": 1e-3}, score=0.5)
        write_run(root, "lora", seed, planted(30 + seed, 0.6), lr=3e-4)  # lora's own default rate, not tuned
    return root, arrays, rows


def _board(section) -> dict[tuple[str, str], dict[str, object]]:
    """Leaderboard lines by (method, protocol): each column's cell."""
    labels = section.leaderboard.labels
    lines = {}
    for _, cells in section.leaderboard.rows:
        by_label = dict(zip(labels, cells))
        lines[(by_label["method"].text, by_label["protocol"].text)] = by_label
    return lines


def test_trials_are_only_in_the_tuning_table_with_the_picked_one_marked(tuned_store, tmp_path):
    root, _, rows = tuned_store
    [section] = build_sections(read_results(root), root)
    trial_jobs = {r["job_hash"] for r in rows["trials"]}
    assert len(trial_jobs) == 5
    # Not among the section's reported runs, not on the leaderboard, not on any front or plot.
    assert not trial_jobs & {r["job_hash"] for r in section.rows}
    assert {r["job_hash"] for r in section.trials} == trial_jobs
    assert sorted(_board(section)) == [
        ("bitfit", "tuned"),
        ("dora", "tuned"),
        ("full", "tuned"),
        ("lora", "defaults"),
        ("lora", "tuned"),
    ]
    for panel in section.panels:
        front_jobs = {cells[-1].text for _, cells in panel.front.rows}
        assert front_jobs and not front_jobs & trial_jobs
        plotted = {p for trace in panel.figure["data"] for p in trace.get("customdata") or [] if p}
        assert not any(job in page for page in plotted for job in trial_jobs)
    # The tuning table: one row per group, each trial's lr and selection score, the picked one marked.
    table = section.tuning
    assert table.labels == ["method", "group", "trials", "picked", "finals", "selection split"]
    groups = {cells[1].text: cells for _, cells in table.rows}
    assert sorted(groups) == ["g-bitfit", "g-lora"]
    assert [label for label, _, _ in groups["g-lora"][2].links] == [
        "lr=0.0001: 0.9500",
        "lr=0.0003: 0.9700 (picked)",
        "lr=0.001: 0.9600",
    ]
    assert [label for label, _, _ in groups["g-bitfit"][2].links] == ["lr=0.001: 0.9400", "lr=0.01: 0.9600 (picked)"]
    assert [groups[g][3].text for g in ("g-lora", "g-bitfit")] == ["lr=0.0003", "lr=0.01"]
    assert groups["g-lora"][4].text == "3" and groups["g-lora"][5].text == SPLIT
    # In the written site: the table is on the index, and each trial has its page, marked as a selection score.
    out = tmp_path / "site"
    write_report(root, out)
    index = (out / "index.html").read_text()
    assert 'class="sortable tuning"' in index and "lr=0.0003: 0.9700 (picked)" in index
    for trial in rows["trials"]:
        page = (out / f"run-{trial['job_hash']}-{trial['run_id']}.html").read_text()
        assert ">selection split</span>" in page


def test_tuned_lines_show_the_protocol_and_the_picked_values(tuned_store):
    root, _, _ = tuned_store
    [section] = build_sections(read_results(root), root)
    board = _board(section)
    assert board[("lora", "tuned")]["picked"].text == "lr=0.0003"
    assert board[("full", "tuned")]["picked"].text == "lr=2e-05"  # from the row's tuned column: no trial in the store
    assert board[("lora", "defaults")]["picked"].text == ""
    assert "not selected on held-out data" in board[("lora", "defaults")]["protocol"].title
    assert "g-lora" in board[("lora", "tuned")]["protocol"].title
    # The group id and the tuned values are the protocol's columns, not settings that set lines apart.
    assert "tuning_group" not in board[("lora", "tuned")]["settings"].text
    assert "tuned=" not in board[("lora", "tuned")]["settings"].text
    docs = dict(zip(section.leaderboard.labels, (tip for _, _, tip in section.leaderboard.headers)))
    assert "not selected on held-out data" in docs["protocol"] and "picked" in docs["picked"]


def test_lines_are_marked_against_the_best_by_the_paired_test(tuned_store):
    root, arrays, _ = tuned_store
    [section] = build_sections(read_results(root), root)
    board = _board(section)
    assert section.leaderboard.rows[0][1][0].text == "lora"  # the top mean: lora's finals
    marks = {key: (line["vs best"].text, line["vs best"].title) for key, line in board.items()}
    assert marks[("lora", "tuned")][0] == "best"
    # bitfit: lora's predictions with four examples flipped (three down, one up); full: far below.
    bitfit = paired_difference(arrays["bitfit"], arrays["lora"])
    full = paired_difference(arrays["full"], arrays["lora"])
    adjusted = holm([bitfit.p_value, full.p_value])
    assert adjusted[0] > 0.05 and adjusted[1] < 0.05  # three seeds: the seed part has two degrees of freedom
    text, title = marks[("bitfit", "tuned")]
    assert text == "n.s." and f"p={p_text(bitfit.p_value)}" in title and f"Holm p={p_text(adjusted[0])}" in title
    assert number(bitfit.difference) in title and number(bitfit.difference) == "-0.0100"
    text, title = marks[("full", "tuned")]
    assert text == "" and title.startswith("significantly below") and f"Holm p={p_text(adjusted[1])}" in title
    # No predictions: no mark, and the title names the run that lacks them.
    text, title = marks[("dora", "tuned")]
    assert text == "" and title.startswith("not tested against the best line") and "no predictions for run" in title
    # The plain run held out nothing and has its own head rate: settings differ, named.
    text, title = marks[("lora", "defaults")]
    assert text == "" and "head_lr – vs 0.001" in title and "selection_samples – vs 500" in title


def test_without_a_testable_line_the_column_is_left_out_with_the_reason(tmp_path):
    """A store without predictions: no column of blanks, one note saying why nothing was tested."""
    root = tmp_path / "store"
    write_run(root, "lora", 0, lr=3e-4, score=0.9)
    write_run(root, "bitfit", 0, lr=1e-3, score=0.8)
    [section] = build_sections(read_results(root), root)
    assert "vs best" not in section.leaderboard.labels and "protocol" not in section.leaderboard.labels
    assert section.leaderboard.note.startswith("No line was tested against the best line")
    assert "no predictions for run" in section.leaderboard.note


def test_versus_pairs_the_finals_of_two_groups_and_never_a_trial(tuned_store, capsys):
    root, arrays, _ = tuned_store
    configs = configurations(read_results(root))

    def one(group, trial):
        [config] = [
            c
            for c in configs
            if c.settings.get("tuning_group") == group
            and ("evaluate_on" in c.settings) == trial
            and (not trial or c.settings["lr"] == 1e-2)
        ]
        return config

    lora_final, bitfit_final, bitfit_trial = one("g-lora", False), one("g-bitfit", False), one("g-bitfit", True)
    assert unpairable(bitfit_final, lora_final) is None  # another group, lr and tuned values: still paired
    assert "evaluate_on selection vs –" in unpairable(bitfit_trial, lora_final)
    # head_lr must match: the same finals at another head rate are not paired.
    other_head = type(bitfit_final)(bitfit_final.key, {**bitfit_final.settings, "head_lr": 1e-4}, bitfit_final.runs)
    assert "head_lr 0.0001 vs 0.001" in unpairable(other_head, lora_final)
    # The command refuses dora's finals for their missing predictions, in one line.
    assert main(["compare", str(root), "--versus", "lora"]) == 2
    assert "no predictions for run" in capsys.readouterr().err
    for row in read_results(root).to_dict("records"):
        if row["method"] == "dora":
            row_path(root, row).unlink()
    # Without dora: bitfit's and full's finals against lora's finals; the trials are left out (lora's
    # three trials would otherwise all match each trial of bitfit, a refusal), the plain lora run is
    # another configuration of the baseline that no final matches.
    result = versus_store(root, "lora")
    assert sorted(line.method.split()[0] for line in result.lines) == ["bitfit", "full"]
    lines = {line.method.split()[0]: line for line in result.lines}
    for method in ("bitfit", "full"):
        want = paired_difference(arrays[method], arrays["lora"])
        got = lines[method].comparison
        assert (got.difference, got.p_value) == (want.difference, want.p_value)
        assert lines[method].seeds == (0, 1, 2) and lines[method].n_examples == N
    assert lines["bitfit"].holm_p == holm([lines["bitfit"].comparison.p_value, lines["full"].comparison.p_value])[0]


def test_each_line_states_the_evaluation_sets_sampling_uncertainty_beside_the_seeds(tuned_store):
    from harness.results.stats import crossed_mean_ci

    root, arrays, _ = tuned_store
    [section] = build_sections(read_results(root), root)
    board = _board(section)
    for method in ("lora", "bitfit", "full"):
        cell = board[(method, "tuned")]["± seeds & examples"]
        expected = crossed_mean_ci(arrays[method])
        assert cell.sort == pytest.approx(expected.half_width) and cell.text == f"± {expected.half_width:.4f}"
        assert f"[{expected.low:.4f}, {expected.high:.4f}] over 3 seed(s) x {N} examples" in cell.title
    assert board[("dora", "tuned")]["± seeds & examples"].title == "no per-example scores"
