"""The report's pages run in a real browser without JavaScript errors (headless Chromium)."""

from __future__ import annotations

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
