"""`harness report`: a self-contained page with leaderboards and marked Pareto fronts."""

from __future__ import annotations

import json
import re

from harness.cli import main
from harness.report import COST_AXES, build_sections
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


def test_hardware_costs_are_split_by_device(tmp_path):
    write_row(_row("lora", 0.88, 10**4, 500, 40.0, "a", device="cpu-x"), tmp_path)
    write_row(_row("full", 0.90, 10**6, 900, 100.0, "b", device="gpu-y"), tmp_path)
    [section] = build_sections(read_results(tmp_path))
    titles = [f["layout"]["title"]["text"] for f in section.figures]
    assert len(titles) == 6  # parameters and size once; memory and time once per device
    assert sum("on gpu-y" in t for t in titles) == 2


def test_report_command_on_real_runs_is_self_contained(tiny_model, tiny_glue, tmp_path, capsys):
    results = tmp_path / "results"
    for method in ("lora:r=4", "bitfit", "full"):
        assert main(tiny_run_args(tiny_model, tiny_glue, results, "--method", method)) == 0
    out = tmp_path / "site"
    assert main(["report", "--results", str(results), "--out", str(out)]) == 0
    assert "(3 runs)" in capsys.readouterr().out
    html = (out / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", html) and "<link" not in html  # nothing fetched from a CDN
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js is inlined
    figures = json.loads(re.search(r"const FIGURES = (\{.*?\});\n", html, re.S).group(1))
    # One figure per cost axis a GLUE run has: parameters, memory, time, size, FLOPs, latency (no generation).
    generation = {"ttft_bs1_p50_ms", "ms_per_generated_token"}
    assert len(figures) == len([a for a in COST_AXES if a.column not in generation])
    for method in ("lora:r=4", "bitfit", "full"):
        assert f">{method}<" in html
    assert [p.name for p in out.iterdir()] == ["index.html"]


def test_report_on_missing_folder_is_bad_input(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_benchmark_tables_appear_in_the_report(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "_benchmarks").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([
        {"method": "none", "forward_ms_p50": 1.0, "step_ms_p50": None},
        {"method": "lora", "forward_ms_p50": 1.5, "step_ms_p50": 9.0},
    ]), tmp_path / "_benchmarks" / "method_step.parquet")
    assert main(["report", "--results", str(tmp_path), "--out", str(tmp_path / "site")]) == 0
    assert "(0 runs)" in capsys.readouterr().out  # benchmark tables are not result rows
    html = (tmp_path / "site" / "index.html").read_text()
    figures = json.loads(re.search(r"const FIGURES = (\{.*?\});\n", html, re.S).group(1))
    [bars] = figures.values()
    assert {t["name"] for t in bars["data"]} == {"forward", "step"}
    assert "benchmark: method_step" in html and ">lora<" in html


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
                   compression_kernel="simulated"), tmp_path)
    write_row(_row("svd:rank=8", 0.5, 0, None, 0.0, "c", flops_per_sample=1e7, latency_bs1_p50_ms=1.5,
                   compression_kernel="real"), tmp_path)
    [section] = build_sections(read_results(tmp_path))
    figures = {f["layout"]["title"]["text"].split(" vs ")[1].split("<br>")[0]: f for f in section.figures}
    assert set(figures) == {"model size (MiB)", "forward GFLOPs per sample", "inference latency at batch 1, p50 (ms)"}
    latency = {t["name"]: t for t in figures["inference latency at batch 1, p50 (ms)"]["data"]}
    assert latency["int4"]["marker"]["symbol"] == ["circle-open"]
    assert "simulated kernel" in latency["int4"]["hovertext"][0]
    assert latency["none"]["marker"]["symbol"] == ["star"] and latency["svd:rank=8"]["marker"]["symbol"] == ["star"]
    flops = {t["name"]: t for t in figures["forward GFLOPs per sample"]["data"]}
    assert "0.04" in flops["int4"]["hovertext"][0] and "0.01" in flops["svd:rank=8"]["hovertext"][0]
