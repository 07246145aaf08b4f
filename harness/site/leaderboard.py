"""Nightly leaderboard: a history of result stores, one folder per night, and one static page
of how each method's score and costs moved over the nights.

    <history>/2026-01-02/<suite>/<task>/<job_hash>-<run_id>.parquet    one night: a copy of its store
    <history>/2026-01-03/...

A night is an ordinary result store, so `harness compare` and `harness report` read it as
it is. A night is added whole or not at all (copied under a dot-name, then renamed), and
readers skip dot-folders, so an interrupted copy never shows up as a short night.

The page is self-contained (plotly.js inlined once) so it can be published as is or opened
from disk: per suite/task, the mean score of each method over seeds, night by night, the
same for the main costs, and the latest night's table with its change since the night
before; on top, what `compare_stores` finds between the last two nights.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.core.atomic import atomic_write
from harness.core.errors import HarnessError
from harness.results import grouping
from harness.results.compare import IMPROVEMENT, METRIC_K, REGRESSION, Comparison, compare_stores
from harness.results.store import latest_per_job, read_results, read_store, result_files
from harness.site.page_text import plotly_text, script_json

NIGHT_FORMAT = "%Y-%m-%d"
# One trend row per night and per these: the seeds of one configuration are averaged.
# `setting` is the configuration (harness.results.grouping) less the code and weights that ran, so that
# a method's fix or a new model revision continues its line while another learning rate,
# budget or device is a line of its own.
TREND_KEYS = ("suite", "task", "method", "model", "setting")
TREND_CODE_KEYS = ("method_versions", "model_digest")


@dataclass(frozen=True)
class Cost:
    column: str
    title: str
    scale: float = 1.0  # divide by this for display


COSTS = (
    Cost("train_seconds", "training time (s)"),
    Cost("peak_memory_bytes", "peak memory (MiB)", 2**20),
    Cost("latency_bs1_p50_ms", "latency at batch 1, p50 (ms)"),
    # The size a deployment stores: the compressed format's bytes where a method reports them.
    Cost("stored_model_bytes", "model size (MiB)", 2**20),
)
TREND_COLUMNS = ["night", *TREND_KEYS, "metric", "score", "seeds", "failed", *(c.column for c in COSTS), "device_name"]


# History ----------------------------------------------------------------------------------


def append_night(
    store_dir: str | os.PathLike, history_dir: str | os.PathLike, date: str | None = None, replace: bool = False
) -> Path:
    """Copy the result files of one night's store into <history>/<date>/ (date: YYYY-MM-DD,
    today in UTC by default) and return that folder. An existing night is kept unless
    `replace`: a second nightly on the same day is more likely a mistake than intent."""
    store = Path(store_dir)
    files = _store_files(store)
    _check_readable(store)
    if Path(history_dir).resolve().is_relative_to(store.resolve()):
        # The store's files would then include the history's, copied into each new night.
        raise HarnessError(f"history {history_dir} is inside the store {store}; keep them apart")
    night = Path(history_dir) / _night_name(date)
    if night.exists() and not replace:
        raise HarnessError(
            f"night {night.name} is already in {history_dir}; give another date or replace it (--replace)"
        )
    staged = _stage_copy(store, files, night)
    _move_into_place(staged, night)
    return night


def _store_files(store: Path) -> list[Path]:
    if not store.is_dir():
        raise HarnessError(f"store {store}: no such folder")
    files = result_files(store)
    if not files:
        raise HarnessError(f"store {store}: no result files (*.parquet), nothing to add")
    return files


def _check_readable(store: Path) -> None:
    """A night is history: a store with a file no reader can use, or with no rows at all, is
    refused before anything is copied (readers would skip the file on every render)."""
    read = read_store(store)
    if read.skipped:
        path, why = read.skipped[0]
        more = f" (and {len(read.skipped) - 1} more)" if len(read.skipped) > 1 else ""
        raise HarnessError(
            f"store {store}: {path} is not a readable result file ({why}){more}; "
            "remove or repair it before adding the night"
        )
    if read.frame.empty:
        raise HarnessError(f"store {store}: no readable rows, nothing to add")


def _night_name(date: str | None) -> str:
    if date is None:
        return datetime.now(timezone.utc).strftime(NIGHT_FORMAT)
    if _parse_night(date) is None:
        raise HarnessError(f"date {date!r}: give a night as YYYY-MM-DD")
    return date


def _parse_night(name: str) -> Date | None:
    """The date a folder name stands for; None for anything else (so '2026-1-2', dot-folders
    and stray folders are not nights: the name must be exactly YYYY-MM-DD)."""
    try:
        day = datetime.strptime(name, NIGHT_FORMAT).date()
    except ValueError:
        return None
    return day if day.strftime(NIGHT_FORMAT) == name else None


def _stage_copy(store: Path, files: list[Path], night: Path) -> Path:
    """The store's files copied under a dot-folder beside the night (same filesystem, so the
    rename that follows is atomic)."""
    night.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{night.name}.", suffix=".tmp", dir=night.parent))
    try:
        for source in files:
            target = staged / source.relative_to(store)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        os.chmod(staged, 0o777 & ~_umask())  # mkdtemp makes 0700; a history is meant to be shared
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return staged


def _move_into_place(staged: Path, night: Path) -> None:
    """Rename the staged folder to the night. A night being replaced is first renamed aside, so
    a crash leaves the old night or the new one (or, between the two renames, the old one
    under a dot-name), never a mix of both."""
    old = staged.with_name(staged.name.removesuffix(".tmp") + ".old") if night.exists() else None
    try:
        if old is not None:
            os.rename(night, old)
        os.rename(staged, night)
    except OSError as exc:  # e.g. another process added the same night meanwhile
        if old is not None and old.exists() and not night.exists():
            os.rename(old, night)  # put the night being replaced back
        shutil.rmtree(staged, ignore_errors=True)
        raise HarnessError(f"night {night}: could not move the copy into place ({exc.strerror})") from None
    if old is not None:
        shutil.rmtree(old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def nights(history_dir: str | os.PathLike) -> list[tuple[Date, Path]]:
    """(date, folder) of every night in the history, oldest first; none for a missing folder."""
    root = Path(history_dir)
    if not root.is_dir():
        return []
    found = [(_parse_night(p.name), p) for p in root.iterdir() if p.is_dir()]
    return sorted((day, path) for day, path in found if day is not None)


# Trend ------------------------------------------------------------------------------------


def trend(history_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per night and (suite, task, method, model): the mean score over the seeds that
    succeeded, how many did (`seeds`) and failed (`failed`), and the mean of each cost in
    COSTS. Each night is first reduced to one row per job (`latest_per_job`), so retries and
    re-runs within a night count once."""
    frames = [_night_summary(day, path) for day, path in nights(history_dir)]
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame(columns=TREND_COLUMNS)
    return pd.concat(frames, ignore_index=True)[TREND_COLUMNS]


def _night_summary(day: Date, path: Path) -> pd.DataFrame:
    df = latest_per_job(read_results(path))
    if df.empty:
        return df
    df = df.assign(
        stored_model_bytes=df["compressed_model_bytes"].fillna(df["model_bytes"]),
        setting=[_trend_setting(row) for row in df.to_dict("records")],
    )
    keys = list(TREND_KEYS)
    ok = df[df["status"] == "ok"]
    stats = ok.groupby(keys, dropna=False).agg(
        metric=("metric", "first"),
        score=("score", "mean"),
        seeds=("run_id", "size"),
        **{c.column: (c.column, "mean") for c in COSTS},
        device_name=("device_name", _distinct),
    )
    failed = df[df["status"] != "ok"].groupby(keys, dropna=False).size().rename("failed")
    out = stats.join(failed, how="outer").reset_index()
    out["seeds"] = out["seeds"].fillna(0).astype(int)
    out["failed"] = out["failed"].fillna(0).astype(int)
    out.insert(0, "night", day)
    return out


def _trend_setting(row: dict) -> str:
    settings = {k: v for k, v in grouping.settings(row).items() if k not in TREND_CODE_KEYS}
    return json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)


def _distinct(values: pd.Series) -> str:
    """The devices behind a mean: costs measured on different hardware should not be read as a
    trend, and the page says which hardware each point comes from."""
    return ", ".join(sorted({str(v) for v in values.dropna()}))


# Latest change ----------------------------------------------------------------------------


@dataclass
class LatestChange:
    base: Date
    new: Date
    comparison: Comparison | None
    problem: str | None = None  # why the two nights could not be compared


def latest_change(
    history_dir: str | os.PathLike,
    metric_tolerance: float = 0.005,
    time_tolerance: float = 0.10,
    metric_k: float = METRIC_K,
) -> LatestChange | None:
    """`compare_stores` between the last two nights; None with fewer than two."""
    found = nights(history_dir)
    if len(found) < 2:
        return None
    (base_day, base), (new_day, new) = found[-2:]
    try:
        return LatestChange(base_day, new_day, compare_stores(base, new, metric_tolerance, time_tolerance, metric_k))
    except HarnessError as exc:  # e.g. every run of the night before failed: the page still says so
        return LatestChange(base_day, new_day, None, str(exc))


# Page -------------------------------------------------------------------------------------


def write_leaderboard(
    history_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    metric_tolerance: float = 0.005,
    time_tolerance: float = 0.10,
    metric_k: float = METRIC_K,
) -> Path:
    """Write <out>/index.html for the history and return its path. The tolerances are those of
    `compare_stores` for the latest night's regressions and improvements."""
    if not nights(history_dir):
        raise HarnessError(f"history {history_dir}: no nights (folders named YYYY-MM-DD); add a result store first")
    frame = trend(history_dir)
    if frame.empty:
        raise HarnessError(f"history {history_dir}: its nights hold no runs")
    html = render(frame, latest_change(history_dir, metric_tolerance, time_tolerance, metric_k), str(history_dir))
    path = Path(out_dir) / "index.html"
    with atomic_write(path, "w") as f:
        f.write(html)
    return path


@dataclass
class Section:
    suite: str
    task: str
    metric: str
    anchor: str
    figures: list[dict]
    rows: list[dict]  # the latest night's, with the change since the night before


def build_sections(frame: pd.DataFrame) -> list[Section]:
    days = sorted(frame["night"].unique())
    latest, previous = days[-1], (days[-2] if len(days) > 1 else None)
    tick = _day_tick(days[0], latest)
    sections = []
    for (suite, task), part in frame.groupby(["suite", "task"], sort=True):
        part = part.assign(series=_series_names(part))
        colors = _colors(sorted(part["series"].unique()))
        metric = next((m for m in part["metric"] if isinstance(m, str)), "score")
        figures = [_line_figure(part, "score", f"{suite}/{task}: {metric} over nights", metric, 1.0, colors, tick)]
        for cost in COSTS:
            if part[cost.column].notna().any():  # e.g. no training time for `none`-only tasks
                figures.append(
                    _line_figure(
                        part, cost.column, f"{suite}/{task}: {cost.title}", cost.title, cost.scale, colors, tick
                    )
                )
        sections.append(Section(suite, task, metric, f"{suite}-{task}", figures, _latest_rows(part, latest, previous)))
    return sections


def _series_names(part: pd.DataFrame) -> list[str]:
    """A line per configuration: its method; the model too when a task runs with several; and
    what differs from the method's other configurations (lr=..., device_name=...) when it has several."""
    if part["model"].nunique(dropna=False) > 1:
        names = [f"{m} · {model}" for m, model in zip(part["method"], part["model"])]
    else:
        names = list(part["method"])
    distinct = list(dict.fromkeys(part["setting"]))
    differs = dict(zip(distinct, grouping.differing([json.loads(s) for s in distinct])))
    return [f"{name} ({differs[s]})" if differs[s] else name for name, s in zip(names, part["setting"])]


def _colors(series: list[str]) -> dict[str, str]:
    """One colour per line, the same in every chart of a task, so a method is read across them."""
    from plotly.colors import qualitative

    palette = qualitative.Plotly + qualitative.D3
    return {name: palette[i % len(palette)] for i, name in enumerate(series)}


def _day_tick(first: Date, last: Date) -> int:
    """Milliseconds between date ticks: whole days (plotly would otherwise tick hours within a
    day for a short history), about ten ticks whatever the span."""
    return 86_400_000 * max(1, math.ceil((last - first).days / 10))


def _line_figure(
    part: pd.DataFrame, column: str, title: str, y_title: str, scale: float, colors: dict[str, str], tick: int
) -> dict:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, group in part.groupby("series", sort=True):
        data = group.dropna(subset=[column]).sort_values("night")
        if data.empty:
            continue
        fig.add_trace(
            go.Scatter(
                # Plotly renders names and hover text as HTML: user strings in them are escaped.
                x=[d.isoformat() for d in data["night"]],
                y=list(data[column] / scale),
                mode="lines+markers",
                name=plotly_text(name),
                line=dict(color=colors[name]),
                hoverinfo="text",
                hovertext=[
                    f"<b>{plotly_text(name)}</b><br>{r.night.isoformat()}<br>{plotly_text(y_title)}: {r[column] / scale:,.4g}<br>"
                    f"mean of {r.seeds} seed(s){f', {r.failed} failed' if r.failed else ''}<br>{plotly_text(r.device_name)}"
                    for _, r in data.iterrows()
                ],
            )
        )
    # The axes are not forced to start at zero: a nightly is read for small moves.
    fig.update_layout(
        title=plotly_text(title),
        xaxis=dict(title="night", type="date", tickformat="%Y-%m-%d", dtick=tick),
        yaxis_title=y_title,
        template="plotly_white",
        height=380,
        margin=dict(l=60, r=20, t=60, b=50),
        legend=dict(title="method"),
    )
    return json.loads(fig.to_json())


def _latest_rows(part: pd.DataFrame, latest: Date, previous: Date | None) -> list[dict]:
    """The latest night's rows of a task, best first, each with its change since the night before
    (absolute for the score, relative for costs); None where the night before lacks the run."""
    now = part[part["night"] == latest].sort_values("score", ascending=False, na_position="last")
    before = {tuple(r[k] for k in TREND_KEYS): r for _, r in part[part["night"] == previous].iterrows()}
    rows = []
    for _, r in now.iterrows():
        b = before.get(tuple(r[k] for k in TREND_KEYS))
        row = {
            "method": r["series"] if "series" in r else r["method"],
            "model": r["model"],
            "seeds": r["seeds"],
            "failed": r["failed"],
            "score": _plain(r["score"]),
            "score_change": _difference(r["score"], b, "score"),
            "is_new": previous is not None and b is None,
            "device_name": r["device_name"],
        }
        for cost in COSTS:
            row[cost.column] = None if _plain(r[cost.column]) is None else r[cost.column] / cost.scale
            row[cost.column + "_change"] = _relative(r[cost.column], b, cost.column)
        rows.append(row)
    return rows


def _difference(value, before, column: str) -> float | None:
    old = None if before is None else _plain(before[column])
    return None if old is None or _plain(value) is None else value - old


def _relative(value, before, column: str) -> float | None:
    old = None if before is None else _plain(before[column])
    return None if not old or _plain(value) is None else (value - old) / abs(old)


def _plain(value):
    """None for a missing value (None or NaN), the value otherwise."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _changes(change: LatestChange | None) -> list[dict]:
    """The comparison's regressions and improvements, regressions first."""
    if change is None or change.comparison is None:
        return []
    frame = change.comparison.to_frame()
    frame = frame[frame["kind"].isin([REGRESSION, IMPROVEMENT])]
    return [{k: _plain(v) for k, v in r.items()} for r in frame.to_dict("records")]


def render(frame: pd.DataFrame, change: LatestChange | None, source: str) -> str:
    import jinja2
    from plotly.offline import get_plotlyjs

    from harness import __version__

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters.update(num=_num, signed=_signed, percent=_percent)
    sections = build_sections(frame)
    figures = {f"fig-{i}-{j}": fig for i, s in enumerate(sections) for j, fig in enumerate(s.figures)}
    days = sorted(frame["night"].unique())
    return env.from_string(TEMPLATE).render(
        sections=sections,
        costs=COSTS,
        change=change,
        changes=_changes(change),
        days=days,
        source=source,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        plotly_js=get_plotlyjs(),
        # Names are user input: inlined in <script> with <, > and & escaped (harness.site.page_text.script_json).
        figures_json=script_json(figures, allow_nan=True),
    )


def _num(value) -> str:
    if _plain(value) is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _signed(value) -> str:
    return "" if value is None else f"{value:+.4f}"


def _percent(value) -> str:
    return "" if value is None else f"{value:+.1%}"


TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>harness nightly leaderboard</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 2rem 3rem; color: #1f2328; }
  header { border-bottom: 1px solid #d0d7de; padding: 1rem 0 .5rem; }
  h1 { margin: 0 0 .3rem; font-size: 1.5rem; }
  h2 { margin-top: 2.5rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
  .meta, .note { color: #59636e; font-size: .9rem; }
  nav a { margin-right: 1rem; }
  .scroll { overflow-x: auto; max-width: 100%; }
  table { border-collapse: collapse; font-size: .85rem; margin: .8rem 0; }
  th, td { padding: .3rem .6rem; border-bottom: 1px solid #eaeef2; text-align: right; white-space: nowrap; }
  th { background: #f6f8fa; }
  td.text, th.text { text-align: left; }
  .regression td, span.regression { color: #b42318; }
  .improvement td, span.improvement { color: #1a7f37; }
  .delta { color: #59636e; font-size: .8rem; margin-left: .3rem; }
  .plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1rem; }
</style>
</head>
<body>
<header>
  <h1>harness nightly leaderboard</h1>
  <div class="meta">{{ days | length }} night(s), {{ days[0].isoformat() }} to {{ days[-1].isoformat() }}, from <code>{{ source }}</code> · generated {{ generated }} · harness {{ version }}</div>
  <nav>{% for s in sections %}<a href="#{{ s.anchor }}">{{ s.suite }}/{{ s.task }}</a>{% endfor %}</nav>
</header>
<section id="latest">
{% if change is none %}
  <h2>Latest night: {{ days[-1].isoformat() }}</h2>
  <p class="note">Only one night so far: nothing to compare it with.</p>
{% else %}
  <h2>Latest night: {{ change.new.isoformat() }} against {{ change.base.isoformat() }}</h2>
  {% if change.comparison is none %}
  <p class="note">Not compared: {{ change.problem }}</p>
  {% else %}
  <p><span class="{{ 'regression' if change.comparison.regressions else 'improvement' }}">{{ change.comparison.summary() }}</span></p>
  {% if changes %}
  <div class="scroll"><table>
    <thead><tr><th class="text">kind</th><th class="text">run</th><th class="text">column</th><th>{{ change.base.isoformat() }}</th><th>{{ change.new.isoformat() }}</th><th>change</th><th class="text">note</th></tr></thead>
    <tbody>{% for c in changes %}<tr class="{{ c.kind }}"><td class="text">{{ c.kind }}</td><td class="text">{{ c.run }}</td><td class="text">{{ c.column }}</td><td>{{ c.base | num }}</td><td>{{ c.new | num }}</td><td>{{ c.relative | percent }}</td><td class="text">{{ c.note }}</td></tr>{% endfor %}</tbody>
  </table></div>
  {% endif %}
  <p class="note">Runs matched by job identity (seed by seed) as <code>harness compare</code> does; time, memory and latency only on the same device.</p>
  {% endif %}
{% endif %}
</section>
{% for s in sections %}{% set outer = loop.index0 %}
<section id="{{ s.anchor }}">
  <h2>{{ s.suite }} / {{ s.task }} <span class="meta">metric: {{ s.metric }} (higher is better), mean over seeds</span></h2>
  {% if s.rows %}
  <div class="scroll"><table>
    <thead><tr><th class="text">method</th><th class="text">model</th><th>seeds</th><th>{{ s.metric }}</th>{% for c in costs %}<th>{{ c.title }}</th>{% endfor %}<th class="text">device</th></tr></thead>
    <tbody>{% for r in s.rows %}
      <tr><td class="text">{{ r.method }}{% if r.is_new %} <span class="delta">new</span>{% endif %}</td><td class="text">{{ r.model }}</td>
      <td>{{ r.seeds }}{% if r.failed %} <span class="regression">+{{ r.failed }} failed</span>{% endif %}</td>
      <td>{{ r.score | num }}<span class="delta">{{ r.score_change | signed }}</span></td>
      {% for c in costs %}<td>{{ r[c.column] | num }}<span class="delta">{{ r[c.column ~ '_change'] | percent }}</span></td>{% endfor %}
      <td class="text">{{ r.device_name }}</td></tr>
    {% endfor %}</tbody>
  </table></div>
  <p class="note">The latest night ({{ days[-1].isoformat() }}); small figures: change since the night before (score: absolute; costs: relative).</p>
  {% else %}
  <p class="note">Not run in the latest night ({{ days[-1].isoformat() }}).</p>
  {% endif %}
  <div class="plots">{% for fig in s.figures %}<div class="plot" id="fig-{{ outer }}-{{ loop.index0 }}"></div>{% endfor %}</div>
</section>
{% endfor %}
<script>{{ plotly_js | safe }}</script>
<script>
const FIGURES = {{ figures_json | safe }};
for (const [id, fig] of Object.entries(FIGURES)) {
  Plotly.newPlot(id, fig.data, fig.layout, {responsive: true, displaylogo: false, displayModeBar: "hover"});
}
</script>
</body>
</html>
"""
