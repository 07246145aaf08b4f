"""`harness report`: a static site of leaderboards, Pareto pages per task and a page per run."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.cli import main
from harness.report import COST_AXES, build_sections, prepare, render_pareto, render_run, write_report
from harness.stats import mean_ci
from harness.store import read_results, write_row
from tests.conftest import tiny_run_args
from tests.test_store_and_schema import full_row


def _row(method, score, trainable, memory, seconds, run_id, status="ok", device="cpu-x", **inference):
    return full_row(
        method=method, score=score, trainable_params=trainable, total_params=10**6, peak_memory_bytes=memory,
        train_seconds=seconds, run_id=run_id, job_hash=f"h{run_id}", status=status, device_name=device,
        peak_memory_kind="cpu_peak_rss_reset", metric="accuracy", error=None if status == "ok" else "RuntimeError: x",
        **{"flops_per_sample": None, "latency_bs1_p50_ms": None, "compression_kernel": None, "ttft_bs1_p50_ms": None,
           "generation_batch_tokens_per_s": None, **inference},
    )


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
        _row("full", 0.90, 10**6, 900 * 2**20, 100.0, "a"),
        _row("lora", 0.88, 10**4, 500 * 2**20, 40.0, "b"),
        _row("bitfit", 0.80, 10**5, 400 * 2**20, 30.0, "c"),  # dominated by lora on parameters only
        _row("dora", 0.10, 10**4, 1, 1.0, "d", status="failed"),
    ]
    for row in rows:
        write_row(row, tmp_path)
    [section] = build_sections(read_results(tmp_path))
    assert [r["method"] for r in section.rows] == ["full", "lora", "bitfit"]
    assert [r["method"] for r in section.failed] == ["dora"]
    params, memory, time, size = section.figures
    stars = lambda fig: {t["name"] for t in fig["data"] if t["name"] != "Pareto front" and "star" in t["marker"]["symbol"]}
    assert stars(params) == {"full", "lora"}
    assert stars(memory) == stars(time) == {"full", "lora", "bitfit"}
    assert params["layout"]["xaxis"]["type"] == "log"
    hover = next(t for t in params["data"] if t["name"] == "lora")["hovertext"][0]
    assert "lora" in hover and "job hb" in hover and "Pareto-optimal" in hover
    # Under each plot, its Pareto-optimal runs, cheapest first.
    front = [[c.text for c in cells] for _, cells in section.panels[0].front.rows]
    assert [(r[0], r[3]) for r in front] == [("lora", "1e+04"), ("full", "1e+06")]


def test_hardware_costs_are_split_by_device(tmp_path):
    write_row(_row("lora", 0.88, 10**4, 500, 40.0, "a", device="cpu-x"), tmp_path)
    write_row(_row("full", 0.90, 10**6, 900, 100.0, "b", device="gpu-y"), tmp_path)
    [section] = build_sections(read_results(tmp_path))
    titles = [f["layout"]["title"]["text"] for f in section.figures]
    assert len(titles) == 6  # parameters and size once; memory and time once per device
    assert sum("on gpu-y" in t for t in titles) == 2
    # One select option per axis, however many devices the axis is split into.
    html = render_pareto(section, "store")
    assert re.findall(r'<option value="([^"]+)"', html) == ["trainable_params", "peak_memory_bytes", "train_seconds",
                                                            "stored_model_bytes"]
    assert "Pareto-optimal runs on gpu-y / cpu_peak_rss_reset: peak memory (MiB)" in html


def test_report_command_on_real_runs_writes_an_offline_linked_site(tiny_model, tiny_glue, tmp_path, capsys):
    results = tmp_path / "results"
    for method in ("lora:r=4", "bitfit", "full"):
        assert main(tiny_run_args(tiny_model, tiny_glue, results, "--method", method)) == 0
    out = tmp_path / "site"
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    assert "(3 runs)" in capsys.readouterr().out
    names = sorted(p.name for p in out.iterdir())
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
    axes = [a.column for a in COST_AXES if a.column not in generation]
    assert len(_figures(pareto)) == len(axes)
    assert re.findall(r'<option value="([^"]+)"', pareto) == axes
    assert re.findall(r'class="axis-panel" data-axis="([^"]+)"', pareto) == axes


def test_report_on_missing_folder_is_bad_input(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_benchmark_tables_appear_in_the_report(tmp_path, capsys):
    (tmp_path / "_benchmarks").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"method": "none", "forward_ms_p50": 1.0, "step_ms_p50": None},
        {"method": "lora", "forward_ms_p50": 1.5, "step_ms_p50": 9.0},
    ]), tmp_path / "_benchmarks" / "method_step.parquet")
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
    write_row(_row("int8", 0.81, 0, None, 0.0, "a"), tmp_path)
    write_row(_row("none", 0.82, 0, None, 0.0, "b"), tmp_path)
    [section] = build_sections(read_results(tmp_path))
    titles = [f["layout"]["title"]["text"] for f in section.figures]
    assert titles == ["glue/sst2: accuracy vs model size (MiB)"]


def test_simulated_kernels_are_hollow_and_off_the_latency_front(tmp_path):
    """A fake-quantized model ran the dense float kernel: its latency is not the compressed
    format's, so it is drawn hollow and never on the latency Pareto front."""
    write_row(_row("none", 0.82, 0, None, 0.0, "a", flops_per_sample=4e7, latency_bs1_p50_ms=2.0), tmp_path)
    write_row(_row("int4", 0.81, 0, None, 0.0, "b", flops_per_sample=4e7, latency_bs1_p50_ms=1.0,
                   compression_kernel="simulated", compressed_model_bytes=1), tmp_path)
    write_row(_row("svd:rank=8", 0.5, 0, None, 0.0, "c", flops_per_sample=1e7, latency_bs1_p50_ms=1.5,
                   compression_kernel="real"), tmp_path)
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
            write_row(_row(method, score, 10, 2**20, 1.0, f"{method}-{model}-{seed}", model=model, seed=seed), tmp_path)
    [section] = build_sections(read_results(tmp_path))
    headers = [label for label, _, _ in section.leaderboard.headers]
    lines = {(cells[0].text, cells[1].text): cells for _, cells in section.leaderboard.rows}
    assert [(cells[0].text, cells[1].text) for _, cells in section.leaderboard.rows] == [
        ("bitfit", "m1"), ("lora", "m1"), ("lora", "m2")]  # by best score
    best, mean, runs = (headers.index(h) for h in ("best score", "mean ± 95% CI", "runs (seed)"))
    lora = lines[("lora", "m1")]
    ci = mean_ci([0.80, 0.84, 0.82])
    assert lora[best].text == "0.8400" and lora[mean].text == str(ci) and lora[mean].sort == pytest.approx(0.82)
    assert lora[mean].title == f"95% CI [{ci.low:.4f}, {ci.high:.4f}]"
    assert [label for label, _, _ in lora[runs].links] == ["s0", "s1", "s2"] and lora[runs].more == 0
    assert lines[("lora", "m2")][mean].text == "0.6000"  # one run: no interval
    # Columns no run has a value in are left out (no generation on GLUE).
    assert "TTFT bs1 ms" not in headers and "trainable" in headers


def _kernel_table(job_hash: str, n: int) -> pa.Table:
    categories = ["matmul", "attention", "elementwise"]
    rows = [{"job_hash": job_hash, "phase": phase, "rank": k + 1, "name": f"aten::op{k}", "category": categories[k % 3],
             "calls": 3, "total_us": 1000.0 - k, "mean_us": (1000.0 - k) / 3, "share": 0.01} for phase in ("inference", "train")
            for k in range(n)]
    return pa.Table.from_pylist(rows)


def test_run_page_shows_costs_with_units_config_metrics_and_kernel_profile(tmp_path):
    results = tmp_path / "results"
    config = {"suite": "glue", "method": "lora", "learning_rate": 0.001}
    write_row(_row("lora", 0.88, 12345, 500 * 2**20, 40.0, "a", config=json.dumps(config), metrics='{"accuracy": 0.88}'), results)
    write_row(_row("bitfit", 0.80, 10, 400 * 2**20, 30.0, "b"), results)
    (results / "_kernels").mkdir()
    pq.write_table(_kernel_table("ha", 20), results / "_kernels" / "ha.parquet")
    out = tmp_path / "site"
    write_report(results, out)
    _assert_offline_and_linked(out)
    page = (out / "run-ha-a.html").read_text()
    assert '\n  "learning_rate": 0.001' in unescape(page)  # config, pretty-printed
    assert '"accuracy": 0.88' in unescape(page)
    assert "<code>peak_memory_bytes</code></td><td>524,288,000 (500.0 MiB)</td><td class=\"text\">bytes</td>" in page
    assert "<code>trainable_params</code></td><td>12,345</td><td class=\"text\">parameters</td>" in page
    assert "peak memory during training (see peak_memory_kind)" in page  # the schema's doc beside it
    # Kernels: per phase, train first, the top 15 of 20 rows and a bar chart of time per category.
    assert page.index("<h3>train") < page.index("<h3>inference")
    assert page.count("aten::op14") == 2 and "aten::op15" not in page
    train, _ = _figures(page).values()  # phases in order: train, inference
    assert train["data"][0]["orientation"] == "h"
    assert dict(zip(train["data"][0]["y"], train["data"][0]["x"])) == pytest.approx(
        {"matmul": sum(1000 - k for k in range(0, 20, 3)) / 1e3, "attention": sum(1000 - k for k in range(1, 20, 3)) / 1e3,
         "elementwise": sum(1000 - k for k in range(2, 20, 3)) / 1e3})
    other = (out / "run-hb-b.html").read_text()
    assert "no kernel profile" in other and "plotly.min.js" not in other  # nothing to plot, no plotly


def test_adapter_overhead_share_is_a_percentage_where_present(tmp_path):
    write_row(_row("lora", 0.88, 10, 2**20, 1.0, "a"), tmp_path)
    write_row(_row("dora", 0.87, 10, 2**20, 1.0, "b"), tmp_path)
    df = read_results(tmp_path)
    df["adapter_overhead_share"] = [0.1234, None]  # old rows have no value
    [section] = build_sections(prepare(df))
    lora, dora = section.rows
    assert "<code>adapter_overhead_share</code></td><td>12.34</td><td class=\"text\">%</td>" in render_run(lora, section, [], "s")
    assert "<code>adapter_overhead_share</code></td><td>–</td>" in render_run(dora, section, [], "s")
    headers = [label for label, _, _ in section.leaderboard.headers]
    column = headers.index("adapter overhead %")
    assert [cells[column].text for _, cells in section.leaderboard.rows] == ["12.3", "–"]


def test_failed_runs_are_listed_with_their_error_and_have_a_page(tmp_path):
    results, out = tmp_path / "results", tmp_path / "site"
    write_row(_row("lora", 0.88, 10, 2**20, 1.0, "a"), results)
    write_row(_row("dora", None, 10, None, None, "b", status="failed", traceback="Traceback: boom"), results)
    write_report(results, out)
    index = (out / "index.html").read_text()
    failed = index[index.index("Failed runs"):]
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
            write_row(_row(method, 0.5 + 0.01 * i, trainable, 2**20, 1.0, f"{method}{i}", seed=i), results)
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
    gone = write_row(_row("lora", 0.88, 10, 2**20, 1.0, "a"), results)
    write_row(_row("bitfit", 0.80, 10, 2**20, 1.0, "b"), results)
    write_report(results, out)
    gone.unlink()
    write_report(results, out)
    assert sorted(p.name for p in out.glob("*.html")) == ["index.html", "pareto-glue-sst2.html", "run-hb-b.html"]


def test_names_cannot_break_out_of_the_page_script(tmp_path):
    write_row(_row("</script><script>alert(1)//", 0.8, 10, 2**20, 1.0, "a"), tmp_path)
    [section] = build_sections(read_results(tmp_path))
    html = render_pareto(section, "store")
    assert "</script><script>alert(1)" not in html
    assert _figures(html)["fig-0"]["data"][0]["name"] == "</script><script>alert(1)//"
