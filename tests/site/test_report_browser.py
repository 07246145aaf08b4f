"""The report's pages run in a real browser without JavaScript errors (headless Chromium)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.results.store import write_row
from harness.site.build import write_report
from tests.support import report_row

CHROMIUM = Path("/usr/bin/chromium")
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_report_in_browser.py"
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(), reason="needs /usr/bin/chromium")


def _check(site: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(site), *args], check=False, capture_output=True, text=True, timeout=120
    )


def test_report_pages_load_without_errors(tmp_path):
    results, site, shots = tmp_path / "results", tmp_path / "site", tmp_path / "shots"
    write_row(report_row("lora", 0.88, 10**4, 500 * 2**20, 40.0, "a", latency_bs1_p50_ms=2.0), results)
    write_row(report_row("full", 0.90, 10**6, 900 * 2**20, 100.0, "b", latency_bs1_p50_ms=1.5), results)
    write_report(results, site)
    done = _check(site, "--screenshots", str(shots), "--runs", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    # Index, the Pareto page once per axis (parameters, memory, time, size, latency), one run page.
    assert "7 page(s) checked, 0 failed" in done.stdout
    assert (shots / "pareto-glue-sst2--latency_bs1_p50_ms.png").stat().st_size > 10_000


def _store_of_several_methods_and_seeds(results: Path) -> None:
    methods = {"full": (0.90, 10**6), "lora:r=8": (0.88, 3 * 10**4), "prefix_tuning:num_virtual_tokens=20": (0.8, 2e4)}
    for i, (method, (score, trainable)) in enumerate(methods.items()):
        for seed in range(3):
            row = report_row(
                method,
                score + 0.01 * seed,
                trainable,
                (500 + 100 * i) * 2**20,
                40.0 + seed,
                f"{i}{seed}",
                seed=seed,
                model="meta-llama/Llama-3.2-1B-Instruct",
                device="NVIDIA H100 80GB HBM3",
                latency_bs1_p50_ms=2.0,
                flops_per_sample=4e9,
                compression_kernel="real",
                adapter_overhead_share=0.1,
            )
            write_row(row, results)


def test_the_index_fits_a_1400_pixel_window_with_its_plot_in_view(tmp_path):
    """At 1400 px no leaderboard scrolls sideways, and the first task's plot ends above 900 px
    (in view without scrolling on a 1400 x 900 screen)."""
    results, site = tmp_path / "results", tmp_path / "site"
    _store_of_several_methods_and_seeds(results)
    write_report(results, site)
    done = _check(site, "--runs", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    bottom = int(re.search(r"first plot ends (\d+) px from the top at 1400 px wide", done.stdout).group(1))
    assert 300 < bottom < 900
    # With every column shown the same table is wider than the window, and the check says so.
    index = site / "index.html"
    index.write_text(index.read_text().replace('class="sortable leaderboard"', 'class="sortable leaderboard all"'))
    done = _check(site, "--runs", "0")
    assert done.returncode == 1 and "leaderboard of glue-sst2 is wider than 1400 px" in done.stdout


def test_a_javascript_error_or_a_network_reference_fails_the_check(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(
        '<!doctype html><html><body><p>report</p><script src="https://cdn.example.org/plotly.js"></script>'
        '<script>throw new Error("deliberate")</script></body></html>'
    )
    done = _check(site)
    assert done.returncode == 1
    assert "FAIL index.html" in done.stdout
    assert "Uncaught Error: deliberate" in done.stdout
    assert "references https://cdn.example.org/plotly.js outside the site" in done.stdout
