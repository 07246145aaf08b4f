"""`harness compare STORE --versus METHOD`: hand-written rows and predictions with planted per-example
scores; the printed statistics are those of `paired_difference` and `holm` on the same arrays, and
bad input is refused with one line and exit status 2."""

from __future__ import annotations

import numpy as np
import pytest

from harness.cli import main
from harness.results.paired import holm, paired_difference
from harness.results.predictions import write_predictions
from harness.results.versus import mark, number, p_text, versus_store
from tests.support import run_row, store

N = 200


def planted(seed: int, p: float, n: int = N) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(float)


def write_run(root, method, seed, scores, *, ids=None, config=None, metric="accuracy", shuffle=False, **columns):
    """One ok row and its predictions table; ids default to 0..n-1, written shuffled when asked."""
    row = run_row(method, seed, config=config, metric=metric, **columns)
    store(root, row)
    ids = list(range(len(scores))) if ids is None else list(ids)
    order = np.random.default_rng(99).permutation(len(ids)) if shuffle else range(len(ids))
    records = [
        dict(split="validation", example_id=ids[i], metric=metric, score=scores[i], prediction=1.0, reference=1.0)
        for i in order
    ]
    write_predictions(root, row["job_hash"], row["run_id"], records)
    return row


@pytest.fixture()
def planted_store(tmp_path):
    """lora (baseline) at seeds 0-3, full at 0-2 (its learning rate not lora's), bitfit at 1-4."""
    root = tmp_path / "store"
    arrays = {"lora": [], "full": [], "bitfit": []}
    for seed in range(4):
        arrays["lora"].append(planted(10 + seed, 0.6))
        write_run(root, "lora", seed, arrays["lora"][-1])
    for seed in range(3):
        arrays["full"].append(np.maximum(arrays["lora"][seed], planted(20 + seed, 0.6)))  # a clear gain
        write_run(root, "full", seed, arrays["full"][-1], config={"lr": 2e-5}, shuffle=True)
    for seed in range(1, 5):
        write_run(root, "bitfit", seed, planted(30 + seed, 0.6))
        if seed < 4:  # seed 4 has no lora run to pair with
            arrays["bitfit"].append(planted(30 + seed, 0.6))
    return root, {k: np.vstack(v) for k, v in arrays.items()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("harness: error: "), err
    return err


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_statistics_are_paired_difference_and_holm_of_the_planted_scores(planted_store, confidence):
    root, arrays = planted_store
    result = versus_store(root, "lora", confidence=confidence)
    by_method = {line.method.split()[0]: line for line in result.lines}
    assert set(by_method) == {"full", "bitfit"}
    lora = arrays["lora"]
    expected = {
        "full": paired_difference(arrays["full"], lora[:3], confidence=confidence),  # seeds in common: 0-2
        "bitfit": paired_difference(arrays["bitfit"], lora[1:4], confidence=confidence),  # seeds in common: 1-3
    }
    for method, want in expected.items():
        got = by_method[method].comparison
        assert (got.difference, got.low, got.high, got.p_value) == (want.difference, want.low, want.high, want.p_value)
    assert by_method["bitfit"].seeds == (1, 2, 3) and by_method["full"].seeds == (0, 1, 2)
    assert by_method["full"].mean == arrays["full"].mean() and by_method["full"].baseline_mean == lora[:3].mean()
    raw = [expected["full"].p_value, expected["bitfit"].p_value]
    assert [by_method["full"].holm_p, by_method["bitfit"].holm_p] == list(holm(raw))
    for line in result.lines:
        assert line.significant == (line.holm_p <= 1 - confidence)
    # the planted gain of full is far beyond noise; bitfit is the baseline's distribution again
    assert mark(by_method["full"]) == "higher" and mark(by_method["bitfit"]) == "n.s."


def test_cli_prints_the_same_numbers_and_exits_0(planted_store, capsys):
    root, arrays = planted_store
    assert main(["compare", str(root), "--versus", "lora"]) == 0
    out = capsys.readouterr().out
    want = paired_difference(arrays["full"], arrays["lora"][:3])
    raw = [want.p_value, paired_difference(arrays["bitfit"], arrays["lora"][1:4]).p_value]
    line = next(text for text in out.splitlines() if text.startswith("glue/sst2") and " full " in text)
    cells = line.split()
    assert number(want.difference) in cells and f"[{number(want.low)}," in cells and f"{number(want.high)}]" in cells
    assert p_text(want.p_value) in cells and p_text(holm(raw)[0]) in cells and cells[-1] == "higher"
    assert cells[1:3] == ["full", "lora"]  # paired although full ran at another learning rate


def test_settings_other_than_method_and_lr_must_match(planted_store):
    root, _ = planted_store
    for seed in range(3):
        write_run(root, "dora", seed, planted(40 + seed, 0.6), config={"max_train_samples": 500})
    result = versus_store(root, "lora", task="sst2", suite="glue")
    assert "dora" not in {line.method.split()[0] for line in result.lines}
    assert any(u.startswith("glue/sst2 dora") for u in result.unpaired)


def test_no_run_of_the_baseline(planted_store, capsys):
    root, _ = planted_store
    assert main(["compare", str(root), "--versus", "dora"]) == 2
    assert "no run of the baseline 'dora'" in one_line_error(capsys)


def test_runs_with_different_example_ids_are_named(tmp_path, capsys):
    root = tmp_path / "store"
    base = write_run(root, "lora", 0, planted(1, 0.6))
    other = write_run(root, "full", 0, planted(2, 0.6), ids=range(1, N + 1))
    assert main(["compare", str(root), "--versus", "lora"]) == 2
    err = one_line_error(capsys)
    assert "scored different examples" in err
    assert f"{other['job_hash']}-{other['run_id']}" in err and f"{base['job_hash']}-{base['run_id']}" in err


def test_no_seed_in_common(tmp_path, capsys):
    root = tmp_path / "store"
    write_run(root, "lora", 0, planted(1, 0.6))
    write_run(root, "full", 5, planted(2, 0.6))
    assert main(["compare", str(root), "--versus", "lora"]) == 2
    assert "no seed in common" in one_line_error(capsys)


def test_store_without_predictions_tables(tmp_path, capsys):
    root = store(tmp_path / "store", run_row("lora", 0), run_row("full", 0))
    assert main(["compare", str(root), "--versus", "lora"]) == 2
    assert "written by this version of the harness" in one_line_error(capsys)


def test_corpus_level_metric_is_refused(tmp_path, capsys):
    root = tmp_path / "store"
    write_run(root, "lora", 0, [None] * N, metric="matthews_correlation")
    write_run(root, "full", 0, [None] * N, metric="matthews_correlation")
    assert main(["compare", str(root), "--versus", "lora"]) == 2
    err = one_line_error(capsys)
    assert "'matthews_correlation'" in err and "per-example score" in err


def test_versus_takes_one_store_and_two_stores_still_need_new(planted_store, capsys):
    root, _ = planted_store
    assert main(["compare", str(root), str(root), "--versus", "lora"]) == 2
    assert "one store" in one_line_error(capsys)
    assert main(["compare", str(root)]) == 2
    assert "two stores" in one_line_error(capsys)
    assert main(["compare", str(root), "--versus", "lora", "--confidence", "1.5"]) == 2
    assert "confidence" in one_line_error(capsys)
