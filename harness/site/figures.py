"""The report's plotly figures, built as plain dicts: plotly's graph objects validate every
property, which costs seconds on stores of thousands of runs. A task's Pareto panels (its
metric against one cost axis, per device for hardware costs), the bar chart of a benchmark
table and that of a run's kernel time by category."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.results.format import number
from harness.results.pareto import pareto_mask
from harness.results.values import direction_text, frame_direction, plain
from harness.site.columns import CONCURRENT_JOBS, COST_AXES, CostAxis
from harness.site.page_text import plotly_text
from harness.site.tables import Table, front_table


@dataclass
class Panel:
    """One plot: the metric against one cost axis (on one device for hardware costs)."""

    id: str
    axis: CostAxis
    title: str
    where: str  # "" or the device (and memory kind) the plot is limited to
    figure: dict
    front: Table
    hollow: int  # points drawn hollow: simulated kernels on an inference axis, shared-device timings
    shared: int = 0  # of those, timed while other jobs shared the device


def task_direction(rows: pd.DataFrame) -> bool:
    """Whether a higher score is better for one task's rows (they share one metric)."""
    where = f"{rows['suite'].iloc[0]}/{rows['task'].iloc[0]}" if len(rows) and {"suite", "task"} <= set(rows) else ""
    return frame_direction(rows, where)


def score_title(metric: str, higher_is_better: bool) -> str:
    """A score axis's title: the metric, and which way is better where that is down (a perplexity)."""
    return metric if higher_is_better else f"{metric} ({direction_text(False)})"


def _points(rows: pd.DataFrame, axis: CostAxis, higher_is_better: bool = True) -> pd.DataFrame:
    """The rows that have this cost, with display cost, hollow (simulated kernel on an inference
    axis, or timed on a shared device on a time axis) and front flags."""
    costs = rows[axis.column].to_numpy(float) / axis.scale
    keep = np.isfinite(costs) & rows["score"].notna().to_numpy() & (costs > 0 if axis.log else True)
    data = rows[keep].reset_index(drop=True)
    costs = costs[keep]
    simulated = (data["compression_kernel"] == "simulated").to_numpy(bool)
    shared = (data[CONCURRENT_JOBS].to_numpy(float) > 1) if axis.timed else np.zeros(len(data), bool)
    hollow = (simulated if axis.inference else np.zeros(len(data), bool)) | shared
    front = np.zeros(len(data), bool)
    front[~hollow] = pareto_mask(costs[~hollow], data["score"].to_numpy(float)[~hollow], higher_is_better)
    return data.assign(_cost=costs, _hollow=hollow, _front=front, _simulated=simulated, _shared=shared)


def _hover(data: pd.DataFrame, axis: CostAxis, metric: str) -> list[str]:
    # A comprehension over columns: iterrows costs ~50 µs a row, which thousands of runs feel.
    # Plotly renders hover text as HTML: the names in it are escaped.
    return [
        f"<b>{plotly_text(method)}</b> seed {seed}<br>{plotly_text(metric)} {score:.4f}<br>{plotly_text(axis.title)}: {number(float(cost))}"
        f"<br>model {plotly_text(model)}<br>job {plotly_text(job)} run {plotly_text(run)}"
        + ("<br><i>simulated kernel: the dense float model ran</i>" if hollow and simulated and axis.inference else "")
        + (f"<br><i>timed while {int(jobs)} jobs shared the device: not a clean time</i>" if shared else "")
        + ("<br><b>Pareto-optimal</b>" if front else "")
        for method, seed, score, cost, model, job, run, hollow, simulated, shared, jobs, front in zip(
            data["method"],
            data["seed"],
            data["score"],
            data["_cost"],
            data["model"],
            data["job_hash"],
            data["run_id"],
            data["_hollow"],
            data["_simulated"],
            data["_shared"],
            data[CONCURRENT_JOBS],
            data["_front"],
        )
    ]


def _figure(data: pd.DataFrame, axis: CostAxis, metric: str, title: str, higher_is_better: bool = True) -> dict:
    hover = np.array(_hover(data, axis, metric), dtype=object)
    # Columns as arrays once: indexing a DataFrame column per method and plot adds up to seconds.
    cost, score = data["_cost"].to_numpy(float), data["score"].to_numpy(float)
    on_front, hollow = data["_front"].to_numpy(bool), data["_hollow"].to_numpy(bool)
    pages = np.where(data["_paged"].to_numpy(bool), data["_page"], None)  # a click opens the run's page, if it has one
    traces = []
    for method, idx in sorted(data.groupby("method", sort=False).indices.items()):
        front = on_front[idx]
        traces.append(
            {
                # Plotly renders names as HTML (and decodes entities): escaped, a name shows as written.
                "type": "scatter",
                "mode": "markers",
                "name": plotly_text(method),
                "x": cost[idx].tolist(),
                "y": score[idx].tolist(),
                "marker": {
                    "size": [14 if f else 9 for f in front],
                    "symbol": ["star" if f else "circle-open" if h else "circle" for f, h in zip(front, hollow[idx])],
                    "line": {"width": [1.5 if f else 0 for f in front], "color": "black"},
                },
                "hovertext": hover[idx].tolist(),
                "hoverinfo": "text",
                "customdata": pages[idx].tolist(),
            }
        )
    front_rows = data[on_front].sort_values(["_cost", "score"])
    if len(front_rows):
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "Pareto front",
                "hoverinfo": "skip",
                "x": front_rows["_cost"].tolist(),
                "y": front_rows["score"].tolist(),
                "line": {"shape": "hv", "dash": "dot", "color": "black"},
            }
        )
    layout = {
        "title": {"text": title},  # escaped by the caller
        "height": 440,
        "margin": {"l": 60, "r": 20, "t": 70, "b": 50},
        "xaxis": {
            "title": {"text": axis.title + (" (log)" if axis.log else "")},
            "type": "log" if axis.log else "linear",
        },
        # Scores near zero (a small LM on GSM8K) sit on the axis, not mid-plot.
        "yaxis": {"title": {"text": plotly_text(score_title(metric, higher_is_better))}, "rangemode": "tozero"},
        "legend": {"title": {"text": "method"}},
    }
    return {"data": traces, "layout": layout}


def _panel_groups(ok: pd.DataFrame, axis: CostAxis):
    """(where, rows) per comparable group: hardware costs one group per device (and memory kind)."""
    if not axis.hardware:
        return [("", ok)]
    keys = ["device_name", "peak_memory_kind"] if axis.per_memory_kind else ["device_name"]
    groups = ok.groupby(keys, dropna=False, sort=True)
    return [(" / ".join(str(plain(k) or "unknown") for k in key), part) for key, part in groups]


# What the plots and their tables read: copying only these per axis and device keeps large
# stores fast (a row has ~100 columns).
PLOT_COLUMNS = [
    "method",
    "seed",
    "score",
    "model",
    "job_hash",
    "run_id",
    "compression_kernel",
    "device_name",
    "peak_memory_kind",
    CONCURRENT_JOBS,
    "_page",
    "_paged",
    *dict.fromkeys(a.column for a in COST_AXES),
]


def axis_points(ok: pd.DataFrame, higher_is_better: bool | None = None):
    """(axis, where, points) for every plot of one task's successful runs; their fronts go the way
    the task's score is better (`higher_is_better`, read from the rows when None)."""
    if higher_is_better is None:
        higher_is_better = task_direction(ok)
    ok = ok[PLOT_COLUMNS]
    for axis in COST_AXES:
        # An axis on which no run has a positive cost says nothing (e.g. training time when
        # nothing trained); a log axis cannot show zeros at all.
        for where, part in _panel_groups(ok, axis):
            if (part[axis.column] > 0).any():  # not e.g. the runs that trained nothing, on a training axis
                yield axis, where, _points(part.reset_index(drop=True), axis, higher_is_better)


def task_panels(ok: pd.DataFrame, suite: str, task: str, metric: str) -> list[Panel]:
    higher = task_direction(ok)
    panels = []
    for axis, where, data in axis_points(ok, higher):
        title = plotly_text(f"{suite}/{task}: {metric} vs {axis.title}") + (
            f"<br><sup>on {plotly_text(where)}</sup>" if where else ""
        )
        figure = _figure(data, axis, metric, title, higher)
        hollow, shared = int(data["_hollow"].sum()), int(data["_shared"].sum())
        front = front_table(data, axis, higher)
        panels.append(Panel(f"fig-{len(panels)}", axis, title, where, figure, front, hollow, shared))
    return panels


# The axis of the one plot a task shows on the index, the first of these it has. Trainable
# parameters: what a PEFT method is chosen on, and hardware-independent, so every run of the task
# (whatever device it ran on) is on one plot with one front; the memory and time axes are split per
# device and would show one device's runs only. Tasks where nothing trained (compression only):
# the stored model size, what compression buys, then the forward FLOPs, equally device-free.
OVERVIEW_AXES = ("trainable_params", "stored_model_bytes", "flops_per_sample")


def overview_panel(panels: list[Panel]) -> Panel | None:
    """The panel of a task's Pareto page that its index section shows (see OVERVIEW_AXES);
    with none of those axes, the page's first panel (a device's plot of a hardware cost)."""
    by_axis = {p.axis.column: p for p in panels if not p.where}
    return next((by_axis[c] for c in OVERVIEW_AXES if c in by_axis), panels[0] if panels else None)


def benchmark_figure(df: pd.DataFrame, name: str, timed: list[str]) -> dict:
    """Grouped bars of a benchmark table: each median-time column (*_ms_p50) per method."""
    return {
        "data": [
            {
                "type": "bar",
                "name": c.removesuffix("_ms_p50"),
                "x": df["method"].tolist(),
                "y": [plain(v) for v in df[c].tolist()],
            }
            for c in timed
        ],
        "layout": {
            "barmode": "group",
            "yaxis": {"title": {"text": "ms (median)"}},
            "height": 420,
            "title": {"text": f"{name}: time per method"},
            "margin": {"l": 60, "r": 20, "t": 60, "b": 120},
        },
    }


def kernel_figure(by_category: pd.Series, phase: str) -> dict:
    """Horizontal bars of one phase's kernel time (µs) by category, in ms."""
    return {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "y": [str(c) for c in by_category.index],
                "x": (by_category.to_numpy(float) / 1e3).tolist(),
                "hovertemplate": "%{y}: %{x:.3f} ms<extra></extra>",
            }
        ],
        "layout": {
            "title": {"text": f"{phase}: kernel time by category"},
            "xaxis": {"title": {"text": "ms (summed over kernels)"}},
            "height": 120 + 28 * len(by_category),
            "margin": {"l": 130, "r": 20, "t": 50, "b": 50},
        },
    }
