"""Nightly leaderboard: nights appended to a history, the trend over nights, the page, and the
CPU nightly end to end (sweep -> store -> compare with the night before -> leaderboard)."""

from __future__ import annotations

import json
import re
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from harness.core.errors import HarnessError
from harness.results.compare import compare_stores
from harness.results.history import append_night, nights, trend
from harness.results.store import result_files
from harness.site.trend import build_sections, write_leaderboard
from harness.spec.sweep_file import load_sweep
from tests.support import MODEL, run_row, store

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
NIGHT_1, NIGHT_2 = "2026-01-02", "2026-01-03"
CPU_TIME_TOLERANCE = 1000  # x the base value: see tests/results/test_nightly_gate.py


def night_rows(day: str, scores: dict[tuple[str, int], float], **columns) -> list[dict]:
    created = datetime.fromisoformat(day).replace(hour=3, tzinfo=timezone.utc)
    return [
        run_row(method, seed, score=score, created_at=created, **columns) for (method, seed), score in scores.items()
    ]


@pytest.fixture()
def history(tmp_path) -> Path:
    """Two nights: LoRA's seeds drop from 0.90 and 0.92 to 0.80 and 0.82 on the second; BitFit's seed 0 was run
    twice that night (only the later run counts); full fine-tuning failed that night."""
    first = store(
        tmp_path / "night-1",
        *night_rows(
            NIGHT_1,
            {
                ("lora:r=8", 0): 0.90,
                ("lora:r=8", 1): 0.92,
                ("bitfit", 0): 0.80,
                ("bitfit", 1): 0.82,
            },
            train_seconds=100.0,
        ),
    )
    early = night_rows(NIGHT_2, {("bitfit", 0): 0.10})[0]
    early["created_at"] -= timedelta(hours=1)
    failed = night_rows(NIGHT_2, {("full", 0): None}, status="failed", error="RuntimeError: CUDA out of memory")
    second = store(
        tmp_path / "night-2",
        early,
        *failed,
        *night_rows(
            NIGHT_2,
            {
                ("lora:r=8", 0): 0.80,
                ("lora:r=8", 1): 0.82,
                ("bitfit", 0): 0.80,
                ("bitfit", 1): 0.82,
            },
            train_seconds=105.0,
        ),
    )  # within compare's 10%: a trend, not a regression
    root = tmp_path / "history"
    append_night(first, root, NIGHT_1)
    append_night(second, root, NIGHT_2)
    return root


def test_nights_are_copies_of_the_stores_in_date_order(history, tmp_path):
    assert nights(history) == [(date(2026, 1, 2), history / NIGHT_1), (date(2026, 1, 3), history / NIGHT_2)]
    copied = [p.relative_to(history / NIGHT_2) for p in result_files(history / NIGHT_2)]
    assert copied == [p.relative_to(tmp_path / "night-2") for p in result_files(tmp_path / "night-2")]
    assert len(copied) == 6
    # Nothing but the nights: the staging folders are gone, and a stray folder is not a night.
    (history / "notes").mkdir()
    (history / "2026-1-4").mkdir()
    assert sorted(p.name for p in history.iterdir()) == ["2026-01-02", "2026-01-03", "2026-1-4", "notes"]
    assert [d for d, _ in nights(history)] == [date(2026, 1, 2), date(2026, 1, 3)]


def test_trend_is_the_mean_over_seeds_of_each_night(history):
    frame = trend(history).set_index(["night", "method"])
    lora_1, lora_2 = frame.loc[(date(2026, 1, 2), "lora:r=8")], frame.loc[(date(2026, 1, 3), "lora:r=8")]
    assert lora_1["score"] == pytest.approx(0.91) and lora_2["score"] == pytest.approx(0.81)
    assert (lora_1["train_seconds"], lora_2["train_seconds"]) == (100.0, 105.0)
    # The later of two BitFit seed-0 runs that night counts, not both (0.10 would pull the mean to 0.46).
    assert frame.loc[(date(2026, 1, 3), "bitfit"), "score"] == pytest.approx(0.81)
    assert frame.loc[(date(2026, 1, 3), "bitfit"), "seeds"] == 2
    full = frame.loc[(date(2026, 1, 3), "full")]
    assert (full["seeds"], full["failed"]) == (0, 1) and full["score"] != full["score"]  # NaN: nothing succeeded
    row = frame.loc[(date(2026, 1, 2), "bitfit")]
    assert (row["suite"], row["task"], row["model"], row["metric"]) == ("glue", "sst2", MODEL, "accuracy")
    assert row["peak_memory_bytes"] == 3 * 2**30 and row["stored_model_bytes"] == 438_000_000
    assert row["latency_bs1_p50_ms"] == 10.0
    assert len(frame) == 5


def test_a_night_is_never_overwritten_unless_replaced(history, tmp_path):
    other = store(tmp_path / "other", *night_rows(NIGHT_1, {("dora:r=8", 0): 0.5}))
    with pytest.raises(HarnessError, match="night 2026-01-02 is already in"):
        append_night(other, history, NIGHT_1)
    assert len(result_files(history / NIGHT_1)) == 4  # untouched
    assert append_night(other, history, NIGHT_1, replace=True) == history / NIGHT_1
    assert [p.name for p in result_files(history / NIGHT_1)] == [p.name for p in result_files(other)]
    assert not [p for p in history.iterdir() if p.name.startswith(".")]  # no staging or old folder left


def test_bad_input_is_one_line(history, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HarnessError, match="no such folder"):
        append_night(tmp_path / "absent", history, "2026-01-05")
    with pytest.raises(HarnessError, match="no result files"):
        append_night(tmp_path / "empty", history, "2026-01-05")
    with pytest.raises(HarnessError, match="YYYY-MM-DD"):
        append_night(tmp_path / "night-1", history, "2026-1-5")
    with pytest.raises(HarnessError, match="inside the store"):
        append_night(tmp_path / "night-1", tmp_path / "night-1" / "history", "2026-01-05")
    with pytest.raises(HarnessError, match="no nights"):
        write_leaderboard(tmp_path / "empty", tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_night_defaults_to_today_in_utc(tmp_path):
    night = append_night(store(tmp_path / "s", run_row()), tmp_path / "history")
    assert night.name in {(datetime.now(timezone.utc) - timedelta(minutes=m)).strftime("%Y-%m-%d") for m in (0, 1)}


def figures(page: str) -> dict:
    return json.loads(re.search(r"const FIGURES = (.*);\n", page).group(1))


def test_page_is_self_contained_and_shows_the_regression_and_the_trend(history, tmp_path):
    path = write_leaderboard(history, tmp_path / "site")
    page = path.read_text()
    assert path == tmp_path / "site" / "index.html"
    assert '<script src="http' not in page and page.count("plotly.js v") == 1
    assert "Latest night: 2026-01-03 against 2026-01-02" in page
    assert "1 regression, 0 improvements, 4 runs compared" in page
    regression = re.search(r'<tr class="regression">(.*?)</tr>', page).group(1)
    assert f"glue/sst2 lora:r=8 {MODEL} seeds 0,1" in regression and ">score<" in regression
    assert "+1 failed" in page  # full fine-tuning, in the latest night's table
    score = figures(page)["fig-0-0"]
    lines = {t["name"]: t for t in score["data"]}
    assert lines["lora:r=8"]["x"] == [NIGHT_1, NIGHT_2]
    assert lines["lora:r=8"]["y"] == pytest.approx([0.91, 0.81])
    assert "full" not in lines  # no successful run: no point to draw
    titles = [f["layout"]["title"]["text"] for f in figures(page).values()]
    assert titles == [
        "glue/sst2: accuracy over nights",
        "glue/sst2: training time (s)",
        "glue/sst2: peak memory (MiB)",
        "glue/sst2: latency at batch 1, p50 (ms)",
        "glue/sst2: model size (MiB)",
    ]


def test_the_page_and_compare_write_a_change_in_the_same_words(tmp_path):
    """The latest night's changes on the page are `harness compare`'s table, cell for cell."""
    history = tmp_path / "history"
    append_night(
        store(tmp_path / "a", *night_rows(NIGHT_1, {("int4", 0): 0.8}, train_seconds=1500.3)),
        history,
        NIGHT_1,
    )
    append_night(
        store(tmp_path / "b", *night_rows(NIGHT_2, {("int4", 0): 0.8}, train_seconds=3000.6)),
        history,
        NIGHT_2,
    )
    page = write_leaderboard(history, tmp_path / "site").read_text()
    cells = re.findall(
        r"<td(?: class=\"text\")?>([^<]*)</td>", re.search(r'<tr class="regression">(.*?)</tr>', page).group(1)
    )
    table = compare_stores(history / NIGHT_1, history / NIGHT_2).table().splitlines()
    [line] = [line for line in table if line.startswith("regression")]
    assert cells[2:6] == ["train_seconds", "1,500", "3,001", "+100.0%"]
    assert re.split(r"\s{2,}", line)[2:6] == cells[2:6]  # columns two spaces apart


def test_one_night_has_nothing_to_compare(tmp_path):
    append_night(store(tmp_path / "s", run_row()), tmp_path / "history", NIGHT_1)
    page = write_leaderboard(tmp_path / "history", tmp_path / "site").read_text()
    assert "Only one night so far" in page and '<tr class="regression">' not in page


def test_nightly_sweep_files_are_valid_and_cover_the_planned_grid():
    gpu = load_sweep(CONFIGS / "nightly.yaml")
    jobs = {
        (j.values["suite"], j.values.get("task"), j.values["method"], j.values["model"], j.values.get("seed", 0))
        for j in gpu.jobs
    }
    glue = {
        ("glue", t, m, "roberta-base", seed)
        for t in ("sst2", "rte")
        for m in ("lora", "dora", "full", "bitfit", "lora+int8")
        for seed in (0, 1, 2)
    }
    gsm8k = {("gsm8k", None, "lora", "smollm2-135m", seed) for seed in (0, 1, 2)}
    gsm8k.add(("gsm8k", None, "none", "smollm2-135m", 0))
    assert jobs == glue | gsm8k and len(gpu.jobs) == len(jobs)
    assert all(j.resources.timeout == 3600 and j.resources.retries == 1 for j in gpu.jobs)
    assert {j.values["max_eval_samples"] for j in gpu.jobs if j.values["suite"] == "gsm8k"} == {500}
    cpu = load_sweep(CONFIGS / "nightly-cpu.yaml")
    assert {(j.values["suite"], j.values.get("task")) for j in cpu.jobs} <= {(s, t) for s, t, *_ in jobs}
    assert all(j.values["max_steps"] <= 10 for j in cpu.jobs)


@pytest.mark.parametrize("bad", [b"", b"PAR1 truncated", b"not parquet at all"])
def test_a_store_with_an_unreadable_file_is_refused_before_anything_is_copied(tmp_path, capsys, bad):
    night = store(tmp_path / "night", *night_rows(NIGHT_1, {("lora:r=8", 0): 0.9}))
    (night / "glue" / "sst2" / "broken.parquet").write_bytes(bad)
    root = tmp_path / "history"
    with pytest.raises(HarnessError, match=r"broken\.parquet is not a readable result file"):
        append_night(night, root, NIGHT_1)
    assert not root.exists() or nights(root) == [] and not any(root.iterdir())
    from harness.cli import main

    assert (
        main(
            [
                "leaderboard",
                "--history",
                str(root),
                "--add",
                str(night),
                "--date",
                NIGHT_1,
                "--out",
                str(tmp_path / "site"),
            ]
        )
        == 2
    )
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("harness: warning")]
    assert len(err) == 1 and "broken.parquet" in err[0]
    assert not root.exists() or not any(root.iterdir())


def test_a_store_whose_files_hold_no_rows_is_refused(tmp_path):
    import pyarrow.parquet as pq

    from harness.spec.schema import SCHEMA

    empty = tmp_path / "empty" / "glue" / "sst2"
    empty.mkdir(parents=True)
    pq.write_table(SCHEMA.empty_table(), empty / "h-r.parquet")
    with pytest.raises(HarnessError, match="no readable rows"):
        append_night(tmp_path / "empty", tmp_path / "history", NIGHT_1)


@pytest.mark.parametrize(
    "flag, value",
    [("--metric-tolerance", "nan"), ("--time-tolerance", "inf"), ("--metric-tolerance", "-1"), ("--metric-k", "nan")],
)
def test_leaderboard_tolerances_must_be_finite_and_not_negative(history, tmp_path, capsys, flag, value):
    from harness.cli import main

    night = store(tmp_path / "night-3", *night_rows("2026-01-04", {("lora:r=8", 0): 0.9}))
    assert (
        main(
            [
                "leaderboard",
                "--history",
                str(history),
                "--add",
                str(night),
                "--date",
                "2026-01-04",
                "--out",
                str(tmp_path / "site"),
                f"{flag}={value}",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err
    assert [d.isoformat() for d, _ in nights(history)] == [NIGHT_1, NIGHT_2]  # nothing added


def test_names_cannot_break_out_of_the_leaderboard_script(tmp_path):
    from html.parser import HTMLParser

    name = "<!--<script </script>&\"'"
    append_night(store(tmp_path / "s", run_row(name, score=0.9, device_name=name)), tmp_path / "history", NIGHT_1)
    page = write_leaderboard(tmp_path / "history", tmp_path / "site").read_text()
    scripts = []

    class Scripts(HTMLParser):
        def handle_starttag(self, tag, attrs):
            self.inside = tag == "script"
            if self.inside:
                scripts.append("")

        def handle_endtag(self, tag):
            self.inside = False

        def handle_data(self, data):
            if getattr(self, "inside", False):
                scripts[-1] += data

    Scripts().feed(page)
    [data] = [s for s in scripts if "const FIGURES = " in s]
    assert "</script" not in data and "<!--" not in data
    loaded = json.loads(re.search(r"const FIGURES = (.*);\n", data).group(1))
    from html import unescape

    assert unescape(loaded["fig-0-0"]["data"][0]["name"]) == name
    assert name in unescape(loaded["fig-0-0"]["data"][0]["hovertext"][0])


def test_trend_keeps_configurations_apart_and_a_method_fix_continues_its_line(tmp_path):
    """Two learning rates of LoRA in one night are two lines, never one mean; a method whose code
    version was bumped the next night continues its line (the trend is there to show such changes)."""
    first = store(
        tmp_path / "n1",
        *night_rows(NIGHT_1, {("lora:r=8", 0): 0.90}),
        *night_rows(NIGHT_1, {("lora:r=8", 0): 0.60}, config={"lr": 1e-5}),
    )
    second = store(tmp_path / "n2", *night_rows(NIGHT_2, {("lora:r=8", 0): 0.88}, config={"method_versions": [2]}))
    root = tmp_path / "history"
    append_night(first, root, NIGHT_1)
    append_night(second, root, NIGHT_2)
    frame = trend(root)
    night_1 = frame[frame["night"] == date(2026, 1, 2)]
    assert sorted(night_1["score"]) == pytest.approx([0.60, 0.90])  # not their mean, 0.75
    [section] = build_sections(frame)
    lines = {name for figure in section.figures[:1] for name in (t["name"] for t in figure["data"])}
    assert any("lr=1e-05" in name for name in lines)
    default = frame[frame["score"].round(2).isin([0.90, 0.88])]
    assert default["setting"].nunique() == 1  # one line across the version bump
