"""`harness report`: a result store -> a small static site that opens offline from disk. This
module renders the pages and writes the site (what they show: harness.site.prepare).

Pages, all in the --out folder:

* index.html: per suite and task first its Pareto plot on one cost axis (figures.OVERVIEW_AXES),
  then a leaderboard with one line per configuration: the mean score with a 95% Student t CI
  over its runs (seeds), the median costs (some columns behind an "all columns" toggle, so
  that the table fits a 1400-pixel window); the failed runs with their error; the tables of
  benchmarks/.
* pareto-<suite>-<task>.html: the task metric against one cost axis at a time, picked with a
  select, and under the plot the Pareto-optimal runs of that axis. Hardware-dependent costs
  (memory, time, latency) are only compared within one device (and one kind of memory
  measurement), so such an axis has one plot per device.
* run-<job_hash>-<run_id>.html: one run's costs with units and the schema's docs, its config,
  metrics, pipeline costs and kernel profile (<results>/_kernels/<job_hash>.parquet).
* plotly.min.js: written once and referenced by a relative <script src>, so thousands of
  pages do not each carry 4 MB of plotly.js and the site still needs no network.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from functools import cache, lru_cache
from html import escape
from pathlib import Path

from harness import __version__
from harness.core.atomic import atomic_write
from harness.core.errors import HarnessError
from harness.results.format import fmt, unit, with_unit
from harness.results.store import latest_per_job, read_results
from harness.results.values import plain
from harness.site.columns import DOCS, LONG_COLUMNS
from harness.site.page_text import script_json
from harness.site.prepare import (
    TaskSection,
    benchmark_sections,
    build_sections,
    kernel_files,
    kernel_profile,
    limit_run_pages,
    prepare,
)
from harness.site.tables import COST_COLUMNS, COST_GROUPS
from harness.spec.schema import COLUMNS


def _pretty_json(text) -> str:
    if plain(text) is None:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        return str(text)  # not JSON after all: shown as stored


@cache
def _value_row_parts(column: str, units: bool) -> tuple[str, str]:
    """The HTML around a value in a run page's tables: the same on every page, so built once."""
    value_class = "" if units else ' class="text wrap"'  # a number, or a text that may be long
    head = f'<tr><td class="text"><code>{escape(column)}</code></td><td{value_class}>'
    unit_cell = f'<td class="text">{escape(unit(column))}</td>' if units else ""
    return head, f'</td>{unit_cell}<td class="text wrap">{escape(DOCS.get(column, ""))}</td></tr>'


def _value_rows(record: dict, columns, units: bool = True):
    """Table rows (column, value[, unit], meaning) as HTML. Built here rather than in a template
    loop: on 10,000 run pages, escaping every static cell again was most of the report's time."""
    from markupsafe import Markup

    rows = []
    for column in columns:
        head, tail = _value_row_parts(column, units)
        rows.append(head + escape(with_unit(column, record.get(column))) + tail)
    return Markup("".join(rows))


def _pipeline_rows(text) -> list[dict]:
    try:
        steps = json.loads(text) if plain(text) is not None else []
    except ValueError:
        return []
    return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness.site", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    return env


@lru_cache(maxsize=1)
def _template_json() -> str:
    """plotly's white theme, once per page: plain-dict figures name no template."""
    import plotly.io as pio

    return script_json(pio.templates["plotly_white"].to_plotly_json())


def _write(path: Path, text: str) -> str:
    """Write beside and rename: a reader never sees half a page. No fsync per page (unlike
    harness.core.atomic): thousands of pages would wait on the disk, and a report is rewritable."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path.name


def _write_plotly_js(out: Path) -> str:
    """The one copy of plotly.js every plotting page loads by relative path (works from disk)."""
    from plotly.offline import get_plotlyjs

    return _write(out / "plotly.min.js", get_plotlyjs())


def _common(source: str) -> dict:
    return {
        "source": source,
        "version": __version__,
        "template_json": _template_json(),
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render_index(sections, benchmarks, n_runs: int, n_failed: int, source: str) -> str:
    # Each task's overview plot is its Pareto page's figure for that axis, the same dict.
    figures = {f"overview-{i}": s.overview.figure for i, s in enumerate(sections) if s.overview}
    figures.update({f"bench-fig-{i}": b.figure for i, b in enumerate(benchmarks) if b.figure})
    return (
        _environment()
        .get_template("index.html.j2")
        .render(
            sections=sections,
            benchmarks=benchmarks,
            n_runs=n_runs,
            n_failed=n_failed,
            figures_json=script_json(figures),
            plotly=bool(figures),
            **_common(source),
        )
    )


def render_pareto(section: TaskSection, source: str) -> str:
    figures = {p.id: p.figure for p in section.panels}
    return (
        _environment()
        .get_template("pareto.html.j2")
        .render(
            s=section,
            figures_json=script_json(figures),
            plotly=bool(figures),
            **_common(source),
        )
    )


def render_run(record: dict, section: TaskSection, kernels: list[dict], source: str) -> str:
    figures = {f"kernel-fig-{i}": k["figure"] for i, k in enumerate(kernels)}
    scalar = [c.name for c in COLUMNS if c.name not in COST_COLUMNS and c.name not in LONG_COLUMNS]
    costs = [(group, _value_rows(record, columns)) for group, columns in COST_GROUPS if columns]
    return (
        _environment()
        .get_template("run.html.j2")
        .render(
            r=record,
            s=section,
            costs=costs,
            details=_value_rows(record, scalar, units=False),
            pipeline=_pipeline_rows(record.get("pipeline_costs")),
            config=_pretty_json(record.get("config")),
            metrics=_pretty_json(record.get("metrics")),
            method_params=_pretty_json(record.get("method_params")),
            eval_settings=_pretty_json(record.get("eval_settings")),
            kernels=kernels,
            docs_kernel=DOCS["compression_kernel"],
            figures_json=script_json(figures),
            plotly=bool(figures),
            **_common(source),
        )
    )


# What the report wrote into --out: only these are ever removed again, so the user's own
# files beside a report (a run-notes.html of theirs) are safe.
MANIFEST = ".harness-report-manifest.json"


def _manifest(out: Path) -> set[str]:
    """The names a previous report wrote here; none for a folder without a readable manifest
    (a report older than the manifest, or never written here: nothing is removed)."""
    try:
        names = json.loads((out / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    # Names only, never a path: a manifest cannot point at a file outside the folder.
    return {n for n in names if isinstance(n, str) and n and "/" not in n and "\\" not in n and n not in (".", "..")}


def _write_manifest(out: Path, names: set[str]) -> None:
    _write(out / MANIFEST, json.dumps({"files": sorted(names)}, indent=1))


def _remove_stale(out: Path, previous: set[str], written: set[str]) -> None:
    """Pages of runs and tasks gone from the store would linger unlinked and out of date: the
    ones an earlier report wrote and this one did not are removed, nothing else."""
    for name in sorted(previous - written):
        (out / name).unlink(missing_ok=True)
    _write_manifest(out, written)


def check_out_dir(out: Path) -> None:
    """Refuse, before anything is read or written, an --out that is a file, lies under a file,
    or sits in a folder this process cannot write into."""
    if out.exists() and not out.is_dir():
        raise HarnessError(f"--out {out} is a file, not a folder; give a folder for the report")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise HarnessError(f"--out {out} lies under the file {existing}; give a folder for the report")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HarnessError(f"--out {out}: cannot write into {existing} (permission denied); give a writable folder")


# Pages for every run of a 10,000-run store take longer to write than the rest of the site
# (and 200 MB); past this many runs of a task only the notable ones get a page.
RUN_PAGES_PER_TASK = 200


def write_report(
    results_dir: str | os.PathLike, out_dir: str | os.PathLike, run_pages_per_task: int | None = RUN_PAGES_PER_TASK
) -> tuple[Path, int]:
    """Write the site; returns the index page and the number of runs (one per job)."""
    out = Path(out_dir)
    check_out_dir(out)
    # One row per job: re-runs, retries and stores merged from several machines count once.
    df = limit_run_pages(prepare(latest_per_job(read_results(results_dir))), run_pages_per_task)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HarnessError(f"--out {out}: cannot create the folder ({exc.strerror}); give a writable folder") from None
    source = str(results_dir)
    sections = build_sections(df, results_dir)
    kernel_tables = kernel_files(results_dir)
    previous = _manifest(out)
    planned = {
        "index.html",
        "plotly.min.js",
        *(s.page for s in sections),
        *(r["_page"] for s in sections for r in s.rows + s.trials + s.failed if r["_paged"]),
    }
    # Listed before they are written: a report killed half-way leaves no page it cannot clean up.
    _write_manifest(out, previous | planned)
    written = {_write_plotly_js(out)}
    for section in sections:
        written.add(_write(out / section.page, render_pareto(section, source)))
        for record in (r for r in section.rows + section.trials + section.failed if r["_paged"]):
            kernels = kernel_profile(kernel_tables.get(record["job_hash"]))
            written.add(_write(out / record["_page"], render_run(record, section, kernels, source)))
    n_failed = int((df["status"] != "ok").sum()) if len(df) else 0
    index = render_index(sections, benchmark_sections(results_dir), len(df), n_failed, source)
    with atomic_write(out / "index.html", "w") as f:  # last: it links to the pages above
        f.write(index)
    _remove_stale(out, previous, written | {"index.html"})
    return out / "index.html", len(df)
