"""`harness report`: a static site of leaderboards, Pareto pages per task and a page per run."""

from __future__ import annotations

import json
import os
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.cli import main
from harness.results.stats import mean_ci
from harness.results.store import read_results, write_row
from harness.site.build import render_pareto, render_run, write_report
from harness.site.columns import COST_AXES
from harness.site.prepare import build_sections, prepare
from tests.support import report_row, tiny_run_args


def _figures(html: str) -> dict:
    return json.loads(re.search(r"const FIGURES = (\{.*?\});\n", html, re.DOTALL).group(1))


def _assert_offline_and_linked(site: Path) -> None:
    """Every page loads only plotly.min.js from beside it, and every link lands on a page of the site."""
    for page in site.glob("*.html"):
        html = page.read_text()
        assert set(re.findall(r"<script[^>]+src=\"([^\"]+)\"", html)) <= {"plotly.min.js"}, page.name
        assert "<link" not in html and "http://" not in html and "https://" not in html, page.name
        for href in re.findall(r"href=\"([^\"#]+)", html):
            assert (site / href).is_file(), f"{page.name} links {href}, which was not written"
        for target in re.findall(r"\"customdata\":\[([^\]]*)\]", html):  # clicks on plot points
            for name in json.loads(f"[{target}]"):
                assert name is None or (site / name).is_file()


def test_sections_mark_the_pareto_front_per_cost_axis(tmp_path):
    rows = [
        report_row("full", 0.90, 10**6, 900 * 2**20, 100.0, "a"),
        report_row("lora", 0.88, 10**4, 500 * 2**20, 40.0, "b"),
        report_row("bitfit", 0.80, 10**5, 400 * 2**20, 30.0, "c"),  # dominated by lora on parameters only
        report_row("dora", 0.10, 10**4, 1, 1.0, "d", status="failed"),
    ]
    for row in rows:
        write_row(row, tmp_path)
    [section] = build_sections(read_results(tmp_path))
    assert [r["method"] for r in section.rows] == ["full", "lora", "bitfit"]
    assert [r["method"] for r in section.failed] == ["dora"]
    params, memory, time, size = section.figures

    def stars(fig):
        return {t["name"] for t in fig["data"] if t["name"] != "Pareto front" and "star" in t["marker"]["symbol"]}

    assert stars(params) == {"full", "lora"}
    assert stars(memory) == stars(time) == {"full", "lora", "bitfit"}
    assert params["layout"]["xaxis"]["type"] == "log"
    hover = next(t for t in params["data"] if t["name"] == "lora")["hovertext"][0]
    assert "lora" in hover and "job hb" in hover and "Pareto-optimal" in hover
    # Under each plot, its Pareto-optimal runs, cheapest first.
    front = [[c.text for c in cells] for _, cells in section.panels[0].front.rows]
    assert [(r[0], r[3]) for r in front] == [("lora", "10,000"), ("full", "1,000,000")]


def test_hardware_costs_are_split_by_device(tmp_path):
    write_row(report_row("lora", 0.88, 10**4, 500, 40.0, "a", device="cpu-x"), tmp_path)
    write_row(report_row("full", 0.90, 10**6, 900, 100.0, "b", device="gpu-y"), tmp_path)
    [section] = build_sections(read_results(tmp_path))
    titles = [f["layout"]["title"]["text"] for f in section.figures]
    assert len(titles) == 6  # parameters and size once; memory and time once per device
    assert sum("on gpu-y" in t for t in titles) == 2
    # One select option per axis, however many devices the axis is split into.
    html = render_pareto(section, "store")
    assert re.findall(r'<option value="([^"]+)"', html) == [
        "trainable_params",
        "peak_memory_bytes",
        "time_to_trained_seconds",
        "stored_model_bytes",
    ]
    assert "Pareto-optimal runs on gpu-y / cpu_peak_rss_reset: peak memory (MiB)" in html


def test_report_command_on_real_runs_writes_an_offline_linked_site(tiny_model, tiny_glue, tmp_path, capsys):
    results = tmp_path / "results"
    for method in ("lora:r=4", "bitfit", "full"):
        assert main(tiny_run_args(tiny_model, tiny_glue, results, "--method", method)) == 0
    out = tmp_path / "site"
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    assert "(3 runs)" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir() if p.name != ".harness-report-manifest.json")
    assert names[:3] == ["index.html", "pareto-glue-sst2.html", "plotly.min.js"]
    assert len(names) == 6 and all(n.startswith("run-") for n in names[3:])
    assert (out / "plotly.min.js").stat().st_size > 1_000_000  # plotly.js once, beside the pages
    _assert_offline_and_linked(out)
    index = (out / "index.html").read_text()
    for method in ("lora:r=4", "bitfit", "full"):
        assert f">{method}</a>" in index  # each line links its best run
    pareto = (out / "pareto-glue-sst2.html").read_text()
    # One figure per cost axis a GLUE run has: parameters, memory, time, size, FLOPs, latency (no generation).
    generation = {"ttft_bs1_p50_ms", "ms_per_generated_token"}
    # On CPU the memory a tiny run adds above its start can be 0 for all three (pages freed by
    # earlier tests are reused); an axis on which no run has a positive cost is left out.
    rows = prepare(read_results(results))
    axes = [a.column for a in COST_AXES if a.column not in generation and (rows[a.column] > 0).any()]
    assert len(axes) >= 5
    assert len(_figures(pareto)) == len(axes)
    assert re.findall(r'<option value="([^"]+)"', pareto) == axes
    assert re.findall(r'class="axis-panel" data-axis="([^"]+)"', pareto) == axes


def test_report_on_missing_folder_is_bad_input(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_benchmark_tables_appear_in_the_report(tmp_path, capsys):
    (tmp_path / "_benchmarks").mkdir(parents=True)
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"method": "none", "forward_ms_p50": 1.0, "step_ms_p50": None},
                {"method": "lora", "forward_ms_p50": 1.5, "step_ms_p50": 9.0},
            ]
        ),
        tmp_path / "_benchmarks" / "method_step.parquet",
    )
    assert main(["report", "--results", str(tmp_path), "--out", str(tmp_path / "site")]) == 0
    assert "(0 runs)" in capsys.readouterr().out  # benchmark tables are not result rows
    html = (tmp_path / "site" / "index.html").read_text()
    [bars] = _figures(html).values()
    assert {t["name"] for t in bars["data"]} == {"forward", "step"}
    assert bars["data"][1]["y"] == [None, 9.0]  # a missing time is a gap, not NaN (invalid JSON)
    assert "benchmark: method_step" in html and ">lora<" in html
    assert '<script src="plotly.min.js">' in html


def test_axes_without_any_positive_cost_are_left_out(tmp_path):
    """Compression-only runs train nothing: no trainable-parameter or training-time plot."""
    write_row(report_row("int8", 0.81, 0, None, 0.0, "a"), tmp_path)
    write_row(report_row("none", 0.82, 0, None, 0.0, "b"), tmp_path)
    [section] = build_sections(read_results(tmp_path))
    titles = [f["layout"]["title"]["text"] for f in section.figures]
    assert titles == ["glue/sst2: accuracy vs model size (MiB)"]


def test_simulated_kernels_are_hollow_and_off_the_latency_front(tmp_path):
    """A fake-quantized model ran the dense float kernel: its latency is not the compressed
    format's, so it is drawn hollow and never on the latency Pareto front."""
    write_row(report_row("none", 0.82, 0, None, 0.0, "a", flops_per_sample=4e7, latency_bs1_p50_ms=2.0), tmp_path)
    write_row(
        report_row(
            "int4",
            0.81,
            0,
            None,
            0.0,
            "b",
            flops_per_sample=4e7,
            latency_bs1_p50_ms=1.0,
            compression_kernel="simulated",
            compressed_model_bytes=1,
        ),
        tmp_path,
    )
    write_row(
        report_row(
            "svd:rank=8",
            0.5,
            0,
            None,
            0.0,
            "c",
            flops_per_sample=1e7,
            latency_bs1_p50_ms=1.5,
            compression_kernel="real",
        ),
        tmp_path,
    )
    [section] = build_sections(read_results(tmp_path))
    panels = {p.axis.title: p for p in section.panels}
    assert set(panels) == {"model size (MiB)", "forward GFLOPs per sample", "inference latency at batch 1, p50 (ms)"}
    latency = {t["name"]: t for t in panels["inference latency at batch 1, p50 (ms)"].figure["data"]}
    assert latency["int4"]["marker"]["symbol"] == ["circle-open"]
    assert "simulated kernel" in latency["int4"]["hovertext"][0]
    assert latency["none"]["marker"]["symbol"] == ["star"] and latency["svd:rank=8"]["marker"]["symbol"] == ["star"]
    flops = {t["name"]: t for t in panels["forward GFLOPs per sample"].figure["data"]}
    assert "0.04" in flops["int4"]["hovertext"][0] and "0.01" in flops["svd:rank=8"]["hovertext"][0]
    # Off the latency table; on the size axis (a real saving in bytes) it is listed, marked simulated.
    methods = lambda panel: {cells[0].text: cells[5].text for _, cells in panel.front.rows}  # noqa: E731
    assert methods(panels["inference latency at batch 1, p50 (ms)"]) == {"svd:rank=8": "real", "none": "–"}
    assert methods(panels["model size (MiB)"]) == {"int4": "simulated", "none": "–"}  # 1 byte, 7 bytes
    leaderboard = {cells[0].text: cells for _, cells in section.leaderboard.rows}
    assert any(c.text == "simulated" for c in leaderboard["int4"])


def test_leaderboard_has_one_line_per_method_and_model_with_mean_and_ci(tmp_path):
    scores = {("lora", "m1"): [0.80, 0.84, 0.82], ("bitfit", "m1"): [0.70, 0.90], ("lora", "m2"): [0.60]}
    for (method, model), values in scores.items():
        for seed, score in enumerate(values):
            write_row(
                report_row(method, score, 10, 2**20, 1.0, f"{method}-{model}-{seed}", model=model, seed=seed), tmp_path
            )
    [section] = build_sections(read_results(tmp_path))
    headers = [label for label, _, _ in section.leaderboard.headers]
    lines = {(cells[0].text, cells[1].text): cells for _, cells in section.leaderboard.rows}
    assert [(cells[0].text, cells[1].text) for _, cells in section.leaderboard.rows] == [
        ("lora", "m1"),
        ("bitfit", "m1"),
        ("lora", "m2"),
    ]  # by mean score (bitfit has the best seed)
    best, mean, runs = (headers.index(h) for h in ("best seed", "mean ± 95% CI (n)", "runs (seed)"))
    lora = lines[("lora", "m1")]
    ci = mean_ci([0.80, 0.84, 0.82])
    assert lora[best].text == "0.8400" and lora[mean].text == str(ci) and lora[mean].sort == pytest.approx(0.82)
    assert lora[mean].title == f"95% CI [{ci.low:.4f}, {ci.high:.4f}], n=3"
    assert [label for label, _, _ in lora[runs].links] == ["s0", "s1", "s2"] and lora[runs].more == 0
    assert lines[("lora", "m2")][mean].text == "0.6000 (n=1)"  # one run: no interval
    # Columns no run has a value in are left out (no generation on GLUE).
    assert "TTFT bs1 ms" not in headers and "trainable" in headers


def _kernel_table(job_hash: str, n: int) -> pa.Table:
    categories = ["matmul", "attention", "elementwise"]
    rows = [
        {
            "job_hash": job_hash,
            "phase": phase,
            "rank": k + 1,
            "name": f"aten::op{k}",
            "category": categories[k % 3],
            "calls": 3,
            "total_us": 1000.0 - k,
            "mean_us": (1000.0 - k) / 3,
            "share": 0.01,
        }
        for phase in ("inference", "train")
        for k in range(n)
    ]
    return pa.Table.from_pylist(rows)


def test_run_page_shows_costs_with_units_config_metrics_and_kernel_profile(tmp_path):
    results = tmp_path / "results"
    config = {"suite": "glue", "method": "lora", "learning_rate": 0.001}
    write_row(
        report_row(
            "lora", 0.88, 12345, 500 * 2**20, 40.0, "a", config=json.dumps(config), metrics='{"accuracy": 0.88}'
        ),
        results,
    )
    write_row(report_row("bitfit", 0.80, 10, 400 * 2**20, 30.0, "b"), results)
    (results / "_kernels").mkdir()
    pq.write_table(_kernel_table("ha", 20), results / "_kernels" / "ha.parquet")
    out = tmp_path / "site"
    write_report(results, out)
    _assert_offline_and_linked(out)
    page = (out / "run-ha-a.html").read_text()
    assert '\n  "learning_rate": 0.001' in unescape(page)  # config, pretty-printed
    assert '"accuracy": 0.88' in unescape(page)
    assert '<code>peak_memory_bytes</code></td><td>524,288,000 (500.0 MiB)</td><td class="text">bytes</td>' in page
    assert '<code>trainable_params</code></td><td>12,345</td><td class="text">parameters</td>' in page
    assert "peak memory during training (see peak_memory_kind)" in page  # the schema's doc beside it
    # Kernels: per phase, train first, the top 15 of 20 rows and a bar chart of time per category.
    assert page.index("<h3>train") < page.index("<h3>inference")
    assert page.count("aten::op14") == 2 and "aten::op15" not in page
    train, _ = _figures(page).values()  # phases in order: train, inference
    assert train["data"][0]["orientation"] == "h"
    assert dict(zip(train["data"][0]["y"], train["data"][0]["x"])) == pytest.approx(
        {
            "matmul": sum(1000 - k for k in range(0, 20, 3)) / 1e3,
            "attention": sum(1000 - k for k in range(1, 20, 3)) / 1e3,
            "elementwise": sum(1000 - k for k in range(2, 20, 3)) / 1e3,
        }
    )
    other = (out / "run-hb-b.html").read_text()
    assert "no kernel profile" in other and "plotly.min.js" not in other  # nothing to plot, no plotly


def test_adapter_overhead_share_is_a_percentage_where_present(tmp_path):
    write_row(report_row("lora", 0.88, 10, 2**20, 1.0, "a"), tmp_path)
    write_row(report_row("dora", 0.87, 10, 2**20, 1.0, "b"), tmp_path)
    df = read_results(tmp_path)
    df["adapter_overhead_share"] = [0.1234, None]  # old rows have no value
    [section] = build_sections(prepare(df))
    lora, dora = section.rows
    assert '<code>adapter_overhead_share</code></td><td>12.34</td><td class="text">%</td>' in render_run(
        lora, section, [], "s"
    )
    assert "<code>adapter_overhead_share</code></td><td>–</td>" in render_run(dora, section, [], "s")
    headers = [label for label, _, _ in section.leaderboard.headers]
    column = headers.index("adapter overhead %")
    assert [cells[column].text for _, cells in section.leaderboard.rows] == ["12.3", "–"]


def test_failed_runs_are_listed_with_their_error_and_have_a_page(tmp_path):
    results, out = tmp_path / "results", tmp_path / "site"
    write_row(report_row("lora", 0.88, 10, 2**20, 1.0, "a"), results)
    write_row(report_row("dora", None, 10, None, None, "b", status="failed", traceback="Traceback: boom"), results)
    write_report(results, out)
    index = (out / "index.html").read_text()
    failed = index[index.index("Failed runs") :]
    assert "dora" in failed and "RuntimeError: x" in failed and 'href="run-hb-b.html"' in failed
    page = (out / "run-hb-b.html").read_text()
    assert "RuntimeError: x" in page and "Traceback: boom" in page


def test_large_stores_get_pages_for_the_notable_runs_only(tmp_path):
    """Past the limit, each leaderboard line's best run and every Pareto-optimal run keep a
    page, and nothing links to a page that was not written."""
    results, out = tmp_path / "results", tmp_path / "site"
    for i in range(12):
        for method in ("lora", "bitfit"):
            trainable = 1 if f"{method}{i}" == "lora0" else 10
            write_row(report_row(method, 0.5 + 0.01 * i, trainable, 2**20, 1.0, f"{method}{i}", seed=i), results)
    write_report(results, out, run_pages_per_task=6)
    pages = {p.name for p in out.glob("run-*.html")}
    assert {"run-hlora11-lora11.html", "run-hbitfit11-bitfit11.html"} <= pages  # each line's best
    assert "run-hlora0-lora0.html" in pages  # the fewest trainable parameters: on that front, with a low score
    assert len(pages) == 6  # filled up with the best scores
    assert {"run-hlora10-lora10.html", "run-hbitfit10-bitfit10.html"} <= pages
    _assert_offline_and_linked(out)
    # Each leaderboard line links the pages its runs have and counts the others.
    index = (out / "index.html").read_text()
    assert re.search(r'title="lora seed 11[^"]*">s11</a> <span class="meta">\+9</span>', index)


def test_pages_of_runs_gone_from_the_store_are_removed(tmp_path):
    results, out = tmp_path / "results", tmp_path / "site"
    gone = write_row(report_row("lora", 0.88, 10, 2**20, 1.0, "a"), results)
    write_row(report_row("bitfit", 0.80, 10, 2**20, 1.0, "b"), results)
    write_report(results, out)
    gone.unlink()
    write_report(results, out)
    assert sorted(p.name for p in out.glob("*.html")) == ["index.html", "pareto-glue-sst2.html", "run-hb-b.html"]


NASTY = ["<!--<script", "</script><script>alert(1)//", "a\"b'c & <d>", "line\u2028sep"]


class _Page(HTMLParser):
    """The text of each <script> element and of the <title>, as a browser's tokenizer splits them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.scripts, self.title, self._in = [], "", None

    def handle_starttag(self, tag, attrs):
        if tag == "script" and not dict(attrs).get("src"):
            self.scripts.append("")
        self._in = tag

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "script":
            self.scripts[-1] += data
        elif self._in == "title":
            self.title += data


@pytest.mark.parametrize("name", NASTY)
def test_names_cannot_break_out_of_the_page_script(tmp_path, name):
    """A method, model or task named with script or comment openers, quotes or a line
    separator leaves every script element whole and its JSON reads back as the same string."""
    results, out = tmp_path / "results", tmp_path / "site"
    write_row(report_row(name, 0.8, 10, 2**20, 1.0, "a", model=name, task=name), results)
    write_row(report_row("lora", 0.7, 20, 2**20, 2.0, "b", task=name), results)
    write_report(results, out)
    for page in out.glob("*.html"):
        parser = _Page()
        parser.feed(page.read_text())
        parser.close()
        for script in parser.scripts:
            assert "</script" not in script.lower() and "<!--" not in script
        figures = [s for s in parser.scripts if "const FIGURES = " in s]
        if page.name.startswith("pareto-"):
            [script] = figures
            data = json.loads(re.search(r"const FIGURES = (\{.*?\});\n", script, re.DOTALL).group(1))
            names = {unescape(t["name"]) for fig in data.values() for t in fig["data"]}
            assert names == {name, "lora", "Pareto front"}  # plotly shows names as HTML: escaped, and read back
            assert all(
                name in unescape(h)
                for fig in data.values()
                for t in fig["data"]
                if t["name"] != "lora" and t["name"] != "Pareto front"
                for h in t["hovertext"]
            )
            assert name in unescape(next(iter(data.values()))["layout"]["title"]["text"])
        if page.name == "run-ha-a.html":
            assert parser.title == f"{name} seed 7 · glue/{name}"


def _board(section):
    headers = [label for label, _, _ in section.leaderboard.headers]
    return headers, [[c.text for c in cells] for _, cells in section.leaderboard.rows]


def test_leaderboard_lines_are_configurations_ranked_by_their_seed_mean(tmp_path):
    """Two learning rates of one method are two lines; a line's rank is its seed mean, so one
    lucky seed does not win; its costs are the median over its runs, not the best run's."""
    from tests.support import run_row

    steady = [0.80, 0.81, 0.82]  # mean 0.81
    lucky = [0.95, 0.60, 0.61]  # best 0.95, mean 0.72
    seconds = [10.0, 20.0, 90.0]
    for seed in range(3):
        for lr, scores in ((1e-4, steady), (2e-3, lucky)):
            write_row(
                run_row(
                    "lora:r=8",
                    seed,
                    config={"lr": lr},
                    score=scores[seed],
                    train_seconds=seconds[seed],
                    init_seconds=0.0,
                ),
                tmp_path,
            )
    write_row(run_row("lora:r=8", 0, config={"lr": 1e-4}, score=0.99, device_name="other GPU"), tmp_path)
    [section] = build_sections(read_results(tmp_path))
    headers, lines = _board(section)
    column = {h: headers.index(h) for h in ("settings", "mean ± 95% CI (n)", "best seed", "runs (seed)", "device")}
    assert [(line[column["settings"]], line[column["device"]]) for line in lines] == [
        ("lr=0.0001", "other GPU"),
        ("lr=0.0001", "NVIDIA H100 80GB HBM3"),
        ("lr=0.002", "NVIDIA H100 80GB HBM3"),
    ]
    _, steady_line, lucky_line = lines
    assert steady_line[column["mean ± 95% CI (n)"]] == str(mean_ci(steady))
    assert lucky_line[column["best seed"]] == "0.9500" and lucky_line[column["runs (seed)"]] == "3"
    assert section.leaderboard.rows[0][0] == "best" and section.leaderboard.rows[1][0] == ""
    # Costs: the median over the line's seeds (20 s), not the best run's (10 s or 90 s).
    time = next(h for h in headers if h.startswith("time to trained model"))
    assert steady_line[headers.index(time)] == "20" and lucky_line[headers.index(time)] == "20"


def test_leaderboard_lines_never_pool_precisions_budgets_or_devices():
    from harness.results.grouping import group_key
    from tests.support import run_row

    def run(method="lora:r=8", seed=0, config=None, device="cuda:0", **columns):
        return run_row(method, seed, config=config, device=device, **columns)

    base = run()
    same = [
        run(seed=1, device="cuda:1"),  # another seed on another GPU of one kind
        run(seed=2, config={"results_dir": "/elsewhere", "data_dir": "/m2", "device": "cuda"}),
    ]
    other = [
        run(config={"precision": "fp32"}),
        run(config={"max_train_samples": 10}),
        run(config={"lr": 1e-4}),
        run(device="cpu"),
        run(device_name="other"),
        run("lora:r=16"),
    ]
    assert all(group_key(r) == group_key(base) for r in same)
    assert len({group_key(r) for r in [base, *other]}) == 1 + len(other)


def test_only_pages_the_report_wrote_are_ever_removed(tmp_path):
    """The user's own run-*.html and pareto-*.html beside a report are kept; the report's own
    pages of runs gone from the store are removed (it lists what it wrote in a manifest)."""
    results, out = tmp_path / "results", tmp_path / "site"
    out.mkdir()
    mine = {"run-notes.html": "my notes", "pareto-draft.html": "my draft", "index.txt": "x"}
    for name, text in mine.items():
        (out / name).write_text(text)
    gone = write_row(report_row("lora", 0.88, 10, 2**20, 1.0, "a"), results)
    write_row(report_row("bitfit", 0.80, 10, 2**20, 1.0, "b"), results)
    write_report(results, out)
    assert (out / "run-ha-a.html").is_file()
    gone.unlink()
    write_report(results, out)
    assert not (out / "run-ha-a.html").exists()
    assert all((out / name).read_text() == text for name, text in mine.items())
    manifest = json.loads((out / ".harness-report-manifest.json").read_text())
    assert sorted(manifest["files"]) == ["index.html", "pareto-glue-sst2.html", "plotly.min.js", "run-hb-b.html"]


def _one_row_store(tmp_path):
    results = tmp_path / "results"
    write_row(report_row("lora", 0.88, 10, 2**20, 1.0, "a"), results)
    return results


@pytest.mark.parametrize("where", ["file", "under a file"])
def test_report_out_on_a_file_is_one_line_and_writes_nothing(tmp_path, capsys, where):
    results = _one_row_store(tmp_path)
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "site" / "deeper"
    assert main(["report", "--results", str(results), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(blocker) in err and "--out" in err
    assert blocker.read_text() == "not a folder" and sorted(p.name for p in tmp_path.iterdir()) == ["results", "taken"]


def test_report_out_in_a_read_only_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    results = _one_row_store(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only mode does not stop writes")
        for out in (locked, locked / "site"):
            assert main(["report", "--results", str(results), "--out", str(out)]) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "cannot write" in err and str(locked) in err
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_report_out_that_cannot_be_written_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """The check behind the read-only case, run whoever runs the tests (root may write anywhere)."""
    results = _one_row_store(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and real_access(path, mode, **kw))
    assert main(["report", "--results", str(results), "--out", str(locked / "site")]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert list(locked.iterdir()) == []


def test_timings_from_a_shared_device_are_hollow_and_off_the_time_fronts(tmp_path):
    """A run timed while 3 jobs shared its device looks fastest, but its time is not clean:
    hollow and off the front of the time and latency axes; its memory still counts."""
    write_row(report_row("lora", 0.88, 10**4, 500 * 2**20, 40.0, "a", latency_bs1_p50_ms=5.0), tmp_path)
    write_row(
        report_row("full", 0.90, 10**6, 400 * 2**20, 10.0, "b", latency_bs1_p50_ms=1.0, concurrent_jobs=3), tmp_path
    )
    [section] = build_sections(read_results(tmp_path))
    panels = {p.axis.column: p for p in section.panels}
    for column in ("time_to_trained_seconds", "latency_bs1_p50_ms"):
        traces = {t["name"]: t for t in panels[column].figure["data"]}
        assert traces["full"]["marker"]["symbol"] == ["circle-open"] and traces["lora"]["marker"]["symbol"] == ["star"]
        assert "3 jobs shared the device" in traces["full"]["hovertext"][0]
        assert [cells[0].text for _, cells in panels[column].front.rows] == ["lora"]
        assert panels[column].shared == 1
    memory = {t["name"]: t for t in panels["peak_memory_bytes"].figure["data"]}
    assert memory["full"]["marker"]["symbol"] == ["star"]
    html = render_pareto(section, "store")
    assert "timed while other jobs shared the device" in html


def test_time_to_a_trained_model_counts_data_driven_initialisation(tmp_path):
    """PiSSA's SVD runs before training, outside train_seconds: 10 s of training after 50 s of
    initialisation is 60 s to a trained model, slower than LoRA's 20 s. A row written before
    init_seconds existed counts its pipeline's total less compression (70 - 5)."""
    write_row(report_row("pissa", 0.90, 10**4, 2**20, 10.0, "a", init_seconds=50.0), tmp_path)
    write_row(report_row("lora", 0.88, 10**4, 2**20, 20.0, "b", init_seconds=0.0), tmp_path)
    write_row(
        report_row(
            "corda", 0.91, 10**4, 2**20, 10.0, "c", init_seconds=None, pipeline_seconds=70.0, compress_seconds=5.0
        ),
        tmp_path,
    )
    [section] = build_sections(read_results(tmp_path))
    [panel] = [p for p in section.panels if p.axis.column == "time_to_trained_seconds"]
    assert panel.axis.title.startswith("time to trained model (s)") and "initialisation" in panel.axis.title
    costs = {t["name"]: t["x"] for t in panel.figure["data"] if t["name"] != "Pareto front"}
    assert costs == {"pissa": [60.0], "lora": [20.0], "corda": [65.0]}
    assert [(cells[0].text, cells[3].text) for _, cells in panel.front.rows] == [
        ("lora", "20"),
        ("pissa", "60"),
        ("corda", "65"),
    ]
    headers, lines = _board(section)
    time = headers.index("time to trained model s")
    assert {line[0]: line[time] for line in lines} == {"pissa": "60", "lora": "20", "corda": "65"}


@pytest.mark.parametrize("content", [b"", b"PAR1 not really", None])
def test_a_corrupt_kernel_table_is_skipped_with_a_warning(tmp_path, capsys, content):
    from harness.site.prepare import kernel_profile

    path = tmp_path / "k.parquet"
    if content is None:  # readable, but not a kernel table
        pq.write_table(pa.table({"x": [1]}), path)
    else:
        path.write_bytes(content)
    assert kernel_profile(path) == []
    assert f"skipped kernel table {path}" in capsys.readouterr().err


def _pareto_figures_by_axis(html: str) -> dict[str, list[dict]]:
    """A Pareto page's figures per cost axis (the axis-panel section each plot div sits in)."""
    figures, by_axis = _figures(html), {}
    for axis, body in re.findall(r'data-axis="([^"]+)" hidden>(.*?)</section>', html, re.DOTALL):
        by_axis[axis] = [figures[i] for i in re.findall(r'class="plot" id="([^"]+)"', body)]
    return by_axis


def _front(points: list[tuple[float, float]]) -> set[tuple[float, float]]:
    """Brute force: the points no other point is at most as costly and as good as, and better in one."""
    return {
        (c, s)
        for c, s in points
        if not any(c2 <= c and s2 >= s and (c2 < c or s2 > s) for c2, s2 in points if (c2, s2) != (c, s))
    }


def _stars(figure: dict) -> set[tuple[float, float]]:
    return {
        (x, y)
        for t in figure["data"]
        if t["name"] != "Pareto front"
        for x, y, symbol in zip(t["x"], t["y"], t["marker"]["symbol"])
        if symbol == "star"
    }


def test_index_shows_each_tasks_pareto_front_on_one_cost_axis(tmp_path):
    """One figure per task on the index: the Pareto page's figure of that axis, the same points
    and front. Trainable parameters where runs trained (all devices on one plot), the model size
    where nothing trained, and a device's plot of the first axis where only hardware costs exist."""
    results, out = tmp_path / "results", tmp_path / "site"
    peft = {"full": (0.90, 10**6), "lora": (0.88, 10**4), "bitfit": (0.80, 10**5), "ia3": (0.85, 10**3)}
    for i, (method, (score, trainable)) in enumerate(peft.items()):
        for seed in range(3):
            device = "gpu-y" if seed == 2 else "cpu-x"  # memory and time split per device; parameters are not
            row = report_row(
                method, score - 0.01 * seed, trainable, 2**20, 10.0, f"p{i}{seed}", seed=seed, device=device
            )
            write_row(row, results)
    for i, (method, size) in enumerate({"none": 2000, "int8": 1000, "int4": 520}.items()):
        write_row(
            report_row(method, 0.82 - 0.01 * i, 0, None, 0.0, f"c{i}", task="mrpc", compressed_model_bytes=size),
            results,
        )
    for i, (method, latency, kernel) in enumerate(
        (("none", 2.0, None), ("int4", 1.0, "simulated"), ("svd", 1.5, "real"))
    ):
        row = report_row(
            method, 0.8 - 0.1 * i, 0, None, 0.0, f"l{i}", task="rte", model_bytes=None, compressed_model_bytes=None
        )
        row.update(latency_bs1_p50_ms=latency, compression_kernel=kernel)
        write_row(row, results)
    write_report(results, out)
    index = (out / "index.html").read_text()
    figures = _figures(index)
    assert sorted(figures) == ["overview-0", "overview-1", "overview-2"]  # glue/mrpc, glue/rte, glue/sst2
    assert index.count('<div class="plot" id="overview-') == 3
    mrpc, rte, sst2 = (figures[f"overview-{i}"] for i in range(3))
    for task, figure, axis in (("mrpc", mrpc, "stored_model_bytes"), ("sst2", sst2, "trainable_params")):
        [same] = _pareto_figures_by_axis((out / f"pareto-glue-{task}.html").read_text())[axis]
        assert figure == same
    [rte_latency] = _pareto_figures_by_axis((out / "pareto-glue-rte.html").read_text())["latency_bs1_p50_ms"]
    assert rte == rte_latency and "on cpu-x" in rte["layout"]["title"]["text"]
    # Every run of the PEFT task on one plot, whatever its device, and the front by brute force.
    points = [(float(t), s - 0.01 * seed) for s, t in peft.values() for seed in range(3)]
    plotted = [(x, y) for t in sst2["data"] if t["name"] != "Pareto front" for x, y in zip(t["x"], t["y"])]
    assert sorted(plotted) == pytest.approx(sorted(points))
    assert _stars(sst2) == _front(points) == {(1e3, 0.85), (1e4, 0.88), (1e6, 0.90)}
    line = next(t for t in sst2["data"] if t["name"] == "Pareto front")
    assert list(zip(line["x"], line["y"])) == sorted(_front(points))
    assert _stars(mrpc) == {(size / 2**20, 0.82 - 0.01 * i) for i, size in enumerate((2000, 1000, 520))}
    # The simulated kernel's latency: hollow and off the front, as on the Pareto page.
    traces = {t["name"]: t for t in rte["data"]}
    assert traces["int4"]["marker"]["symbol"] == ["circle-open"] and _stars(rte) == {(2.0, 0.8), (1.5, 0.8 - 0.1 * 2)}
    assert "Hollow points: a simulated kernel" in index
    # Beside each plot its front, cheapest first, each method linking its run's page.
    sst2_section = index[index.index('id="glue-sst2"') :]
    front = sst2_section[: sst2_section.index("</table>")]
    assert [link for link in re.findall(r'<a href="(run-[^"]+)">(\w+)</a>', front) if link[1] in peft] == [
        ("run-hp30-p30.html", "ia3"),
        ("run-hp10-p10.html", "lora"),
        ("run-hp00-p00.html", "full"),
    ]
    _assert_offline_and_linked(out)


def _visible(table) -> list[str]:
    return [label for i, (label, _, _) in enumerate(table.headers) if i not in table.extra]


def test_leaderboard_shows_fewer_columns_and_keeps_the_rest_behind_a_toggle(tmp_path):
    """The default columns fit a 1400-pixel window; the best seed, trainable %, GFLOPs/sample
    and adapter overhead are hidden columns of the same table (shown by its toggle), not dropped."""
    results, out = tmp_path / "results", tmp_path / "site"
    for i, (method, lr) in enumerate((("lora", 1e-4), ("bitfit", 1e-4), ("lora", 1e-3))):
        row = report_row(
            method,
            0.8 + 0.01 * i,
            10**4,
            2**20,
            1.0,
            f"a{i}",
            flops_per_sample=4e9,
            latency_bs1_p50_ms=1.0,
            compression_kernel="real",
            config=json.dumps({"method": method, "lr": lr}),
        )
        write_row({**row, "adapter_overhead_share": 0.25}, results)
    write_report(results, out)
    [section] = build_sections(prepare(read_results(results)))
    board = section.leaderboard
    assert _visible(board) == [
        "method",
        "model",
        "settings",
        "mean ± 95% CI (n)",
        "runs (seed)",
        "trainable",
        "peak mem MiB",
        "time to trained model s",
        "lat bs1 p50 ms",
        "stored MiB",
        "kernel",
        "device",
    ]
    assert board.extra_labels == ["best seed", "trainable %", "GFLOPs/sample", "adapter overhead %"]
    headers = [label for label, _, _ in board.headers]
    lines = {(cells[0].text, cells[2].text): [c.text for c in cells] for _, cells in board.rows}
    assert sorted(lines) == [("bitfit", "–"), ("lora", "lr=0.0001"), ("lora", "lr=0.001")]
    extra = {label: lines[("bitfit", "–")][headers.index(label)] for label in board.extra_labels}
    assert extra == {"best seed": "0.8100", "trainable %": "1", "GFLOPs/sample": "4", "adapter overhead %": "25"}
    # In the page: every column's header and cells are there, the extra ones marked to hide.
    index = (out / "index.html").read_text()
    table = index[index.index('class="sortable leaderboard"') :]
    table = table[: table.index("</table>")]
    heads = re.findall(r'<th class="([^"]*)"[^>]*>([^<]+)</th>', table)
    assert [label for _, label in heads] == headers
    assert [label for cls, label in heads if "extra" in cls] == board.extra_labels
    first_row = re.findall(r'<td class="([^"]*)"', table.split("<tbody>")[1].split("</tr>")[0])
    assert [i for i, cls in enumerate(first_row) if "extra" in cls] == sorted(board.extra)
    assert "all columns" in index and "adds best seed, trainable %, GFLOPs/sample, adapter overhead %" in index
