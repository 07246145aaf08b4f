"""Open a `harness report` site in headless Chromium and fail on any JavaScript error.

    python scripts/check_report_in_browser.py reports/ --screenshots /tmp/shots

Checks index.html, every Pareto page once per cost axis (the page's #axis hash picks it)
and the first few run pages (those with a kernel profile first, as they plot). A page
fails when

* it references something outside the site: a <script src> or <link href> that is not a
  relative path to a file in the folder (the site must open offline, from disk);
* Chromium logs an uncaught exception or an error on its console. With --enable-logging=stderr
  Chromium (156) prints every console message as `...:INFO:CONSOLE:N] "message", source: ...`
  whatever its level, and an uncaught `throw new Error("x")` as `"Uncaught Error: x"`; so a
  CONSOLE line fails when it says Uncaught, is logged at ERROR level, or names an *Error;
* it has plot placeholders but none was drawn (no plotly SVG in the DOM after loading).
* (index.html) at 1400 pixels wide a leaderboard table or the page itself scrolls sideways:
  measured in a probe page that frames the index 1400 px wide (Chromium lets a file:// page
  read a framed file:// page only with --allow-file-access-from-files). The probe also prints
  where the index's first plot ends, to tell whether it shows without scrolling.

Prints one line per page and exits 1 if any page failed (2 when Chromium is missing).
"""

from __future__ import annotations

import argparse
import html
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=8000",
    "--window-size=1400,2000",
)
CONSOLE_ERROR = re.compile(r"Uncaught|:ERROR:CONSOLE|\b\w*Error\b")
REFERENCE = re.compile(r"<(?:script|link)\b[^>]*?\b(?:src|href)\s*=\s*[\"']?([^\"'\s>]+)", re.IGNORECASE)


@dataclass
class Page:
    path: Path
    fragment: str = ""  # a Pareto page's cost axis

    @property
    def label(self) -> str:
        return self.path.name + (f"#{self.fragment}" if self.fragment else "")

    @property
    def url(self) -> str:
        return self.path.resolve().as_uri() + (f"#{self.fragment}" if self.fragment else "")


@dataclass
class Result:
    page: Page
    problems: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    note: str = ""


def pages_to_check(site: Path, runs: int) -> list[Page]:
    pages = [Page(site / "index.html")]
    for pareto in sorted(site.glob("pareto-*.html")):
        axes = re.findall(r'<option value="([^"]+)"', pareto.read_text(encoding="utf-8"))
        pages += [Page(pareto, axis) for axis in axes] or [Page(pareto)]
    run_pages = sorted(
        site.glob("run-*.html"), key=lambda p: ("kernel-fig-" not in p.read_text(encoding="utf-8"), p.name)
    )
    return pages + [Page(p) for p in run_pages[:runs]]


def static_problems(path: Path) -> list[str]:
    """References that would need a network, or a file the site lacks."""
    problems = []
    for target in REFERENCE.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^([a-z][a-z0-9+.-]*:|//)", target, re.IGNORECASE):
            problems.append(f"references {target} outside the site")
        elif not (path.parent / target.split("#")[0].split("?")[0]).is_file():
            problems.append(f"references {target}, which is not in the site")
    return problems


def console_errors(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if "CONSOLE" in line and CONSOLE_ERROR.search(line)]


def drawing_problems(html: str, dom: str) -> list[str]:
    """A page with plot placeholders must show at least one drawn plot."""
    if 'class="plot"' not in html:
        return []
    return [] if 'data-drawn="1"' in dom and "main-svg" in dom else ["no plot was drawn"]


def open_in_chromium(page: Page, screenshot: Path, timeout: float) -> tuple[int, str, str]:
    with tempfile.TemporaryDirectory(prefix="report-check-profile-") as profile:
        command = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}", "--dump-dom", page.url]
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return -1, "", f"timed out after {timeout:.0f} s"
    return done.returncode, done.stdout, done.stderr


WIDTH = 1400  # the window the index must fit
PROBE = """<!doctype html><html><body style="margin:0">
<iframe id="f" src="%s" style="width:%dpx;height:2000px;border:0"></iframe><pre id="out"></pre>
<script>
const frame = document.getElementById("f");
frame.addEventListener("load", () => {
  const doc = frame.contentDocument, root = doc.documentElement;
  const wide = [...doc.querySelectorAll("table.leaderboard")]
    .filter(t => { const box = t.closest("div.scroll") || t; return box.scrollWidth > box.clientWidth + 1; })
    .map(t => (t.closest("section") || {}).id || "?");
  const plot = doc.querySelector("div.plot");
  document.getElementById("out").textContent = "PROBE " + JSON.stringify({
    wide, page: root.scrollWidth > root.clientWidth + 1, plot_bottom: plot ? Math.round(plot.getBoundingClientRect().bottom) : null});
});
</script></body></html>"""


def width_problems(page: Page, timeout: float) -> tuple[list[str], str]:
    """Sideways scrolling of the index at WIDTH px (problems), and where its first plot ends (a note)."""
    with tempfile.TemporaryDirectory(prefix="report-check-probe-") as folder:
        probe = Path(folder) / "probe.html"
        probe.write_text(PROBE % (page.url, WIDTH), encoding="utf-8")
        command = [
            CHROMIUM,
            *(f for f in FLAGS if not f.startswith("--window-size")),
            f"--window-size={WIDTH + 40},2100",
            "--allow-file-access-from-files",
            f"--user-data-dir={folder}/profile",
            "--dump-dom",
            probe.as_uri(),
        ]
        try:
            done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [f"width probe timed out after {timeout:.0f} s"], ""
    found = re.search(r"PROBE (\{.*?\})</pre>", done.stdout)
    if not found:
        return ["width probe read nothing (could Chromium not frame the page?)"], ""
    seen = json.loads(html.unescape(found.group(1)))
    problems = [f"leaderboard of {section} is wider than {WIDTH} px" for section in seen["wide"]]
    problems += [f"the page scrolls sideways at {WIDTH} px"] if seen["page"] else []
    bottom = seen["plot_bottom"]
    return problems, "" if bottom is None else f"first plot ends {bottom} px from the top at {WIDTH} px wide"


def check_page(page: Page, shots: Path, timeout: float) -> Result:
    result = Result(page, static_problems(page.path))
    name = page.path.stem + (f"--{page.fragment}" if page.fragment else "")
    result.screenshot = shots / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"
    code, dom, stderr = open_in_chromium(page, result.screenshot, timeout)
    if code != 0 or not result.screenshot.is_file():
        result.problems.append(f"chromium exited {code}: {stderr.strip().splitlines()[-1:] or ''}")
        return result
    result.problems += [f"console: {line}" for line in console_errors(stderr)]
    result.problems += drawing_problems(page.path.read_text(encoding="utf-8"), dom)
    if page.path.name == "index.html" and not page.fragment:
        problems, result.note = width_problems(page, timeout)
        result.problems += problems
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="folder written by `harness report --out`")
    parser.add_argument("--screenshots", type=Path, help="folder for the PNGs (default: a temporary folder)")
    parser.add_argument("--runs", type=int, default=3, help="run pages to open (default 3)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per page")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).is_file():
        print(f"{CHROMIUM} not found", file=sys.stderr)
        return 2
    if not (args.site / "index.html").is_file():
        print(f"{args.site}/index.html not found", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="report-shots-") as scratch:
        shots = args.screenshots or Path(scratch)
        shots.mkdir(parents=True, exist_ok=True)
        results = [check_page(page, shots, args.timeout) for page in pages_to_check(args.site, args.runs)]
        for r in results:
            where = f" -> {r.screenshot}" if args.screenshots else ""
            print(f"{'FAIL' if r.problems else 'ok  '} {r.page.label}{where}")
            for problem in r.problems:
                print(f"     {problem}")
            if r.note:
                print(f"     ({r.note})")
    failed = sum(bool(r.problems) for r in results)
    print(f"{len(results)} page(s) checked, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
