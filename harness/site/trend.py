"""`harness leaderboard`'s page: per suite and task the mean score of each configuration over
seeds, night by night, the same for the main costs, and the latest night's table with its
change since the night before; on top, what `compare_stores` finds between the last two
nights (the history and its trend: harness.results.history).

The page is self-contained (plotly.js inlined once) so it can be published as is or opened
from disk.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import date as Date
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.core.atomic import atomic_write
from harness.core.errors import HarnessError
from harness.results import grouping
from harness.results.compare import IMPROVEMENT, METRIC_K, REGRESSION
from harness.results.format import number, percent, signed
from harness.results.history import COSTS, TREND_KEYS, LatestChange, latest_change, nights, trend
from harness.results.values import direction_text, plain, relative, score_direction
from harness.site.page_text import plotly_text, script_json


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
    rows: list[dict]  # the latest night's, best first, with the change since the night before
    higher_is_better: bool = True  # of the task's score; False for a perplexity


def build_sections(frame: pd.DataFrame) -> list[Section]:
    days = sorted(frame["night"].unique())
    latest, previous = days[-1], (days[-2] if len(days) > 1 else None)
    tick = _day_tick(days[0], latest)
    sections = []
    for (suite, task), part in frame.groupby(["suite", "task"], sort=True):
        part = part.assign(series=_series_names(part))
        colors = _colors(sorted(part["series"].unique()))
        metric = next((m for m in part["metric"] if isinstance(m, str)), "score")
        higher = _direction(part, f"{suite}/{task}")
        y_title = metric if higher else f"{metric} ({direction_text(False)})"
        figures = [_line_figure(part, "score", f"{suite}/{task}: {metric} over nights", y_title, 1.0, colors, tick)]
        for cost in COSTS:
            if part[cost.column].notna().any():  # e.g. no training time for `none`-only tasks
                figures.append(
                    _line_figure(
                        part, cost.column, f"{suite}/{task}: {cost.title}", cost.title, cost.scale, colors, tick
                    )
                )
        rows = _latest_rows(part, latest, previous, higher)
        sections.append(Section(suite, task, metric, f"{suite}-{task}", figures, rows, higher))
    return sections


def _direction(part: pd.DataFrame, where: str) -> bool:
    """Whether a higher score is better for a task's trend rows; rows of nights where every seed
    failed have no score, and no say (a trend of an older history has no column: higher)."""
    if "higher_is_better" not in part:
        return True
    scored = part["seeds"] > 0 if "seeds" in part else part["score"].notna()
    return score_direction(part.loc[scored, "higher_is_better"], where)


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


def _latest_rows(part: pd.DataFrame, latest: Date, previous: Date | None, higher_is_better: bool = True) -> list[dict]:
    """The latest night's rows of a task, best first (the lowest score first where lower is better),
    each with its change since the night before (absolute for the score, relative for costs); None
    where the night before lacks the run."""
    now = part[part["night"] == latest].sort_values("score", ascending=not higher_is_better, na_position="last")
    before = {tuple(r[k] for k in TREND_KEYS): r for _, r in part[part["night"] == previous].iterrows()}
    rows = []
    for _, r in now.iterrows():
        b = before.get(tuple(r[k] for k in TREND_KEYS))
        row = {
            "method": r["series"] if "series" in r else r["method"],
            "model": r["model"],
            "seeds": r["seeds"],
            "failed": r["failed"],
            "score": plain(r["score"]),
            "score_change": _difference(r["score"], b, "score"),
            "is_new": previous is not None and b is None,
            "device_name": r["device_name"],
        }
        for cost in COSTS:
            row[cost.column] = None if plain(r[cost.column]) is None else r[cost.column] / cost.scale
            row[cost.column + "_change"] = relative(_before(b, cost.column), plain(r[cost.column]))
        rows.append(row)
    return rows


def _before(before, column: str):
    """The night before's value of a column; None where that night lacks the run or the value."""
    return None if before is None else plain(before[column])


def _difference(value, before, column: str) -> float | None:
    old = _before(before, column)
    return None if old is None or plain(value) is None else value - old


def _changes(change: LatestChange | None) -> list[dict]:
    """The comparison's regressions and improvements, regressions first."""
    if change is None or change.comparison is None:
        return []
    frame = change.comparison.to_frame()
    frame = frame[frame["kind"].isin([REGRESSION, IMPROVEMENT])]
    return [{k: plain(v) for k, v in r.items()} for r in frame.to_dict("records")]


def render(frame: pd.DataFrame, change: LatestChange | None, source: str) -> str:
    import jinja2
    from plotly.offline import get_plotlyjs

    from harness import __version__

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness.site", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters.update(num=number, signed=signed, percent=percent)
    sections = build_sections(frame)
    figures = {f"fig-{i}-{j}": fig for i, s in enumerate(sections) for j, fig in enumerate(s.figures)}
    days = sorted(frame["night"].unique())
    return env.get_template("leaderboard.html.j2").render(
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
