"""`harness report`: a result store -> a small static site that opens offline from disk.

Pages, all in the --out folder:

* index.html: per suite and task a leaderboard with one line per (method, model): its best
  run by score, the mean score with a 95% bootstrap CI over its runs (seeds), and the best
  run's costs; the failed runs with their error; the tables of benchmarks/.
* pareto-<suite>-<task>.html: the task metric against one cost axis at a time, picked with a
  select, and under the plot the Pareto-optimal runs of that axis. Hardware-dependent costs
  (memory, time, latency) are only compared within one device (and one kind of memory
  measurement), so such an axis has one plot per device.
* run-<job_hash>-<run_id>.html: one run's costs with units and the schema's docs, its config,
  metrics, pipeline costs and kernel profile (<results>/_kernels/<job_hash>.parquet).
* plotly.min.js: written once and referenced by a relative <script src>, so thousands of
  pages do not each carry 4 MB of plotly.js and the site still needs no network.

Figures are plotly JSON built as plain dicts: plotly's graph objects validate every
property, which costs seconds on stores of thousands of runs.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache, lru_cache
from html import escape
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from harness import __version__
from harness.core.atomic import atomic_write
from harness.core.errors import HarnessError, first_line
from harness.results import grouping
from harness.results.pareto import pareto_mask
from harness.results.stats import MeanCI, mean_ci
from harness.results.store import latest_per_job, read_results
from harness.site.page_text import plotly_text, script_json
from harness.spec.schema import COLUMNS


@dataclass(frozen=True)
class CostAxis:
    column: str
    title: str
    scale: float = 1.0  # divide the column by this for display
    log: bool = False
    hardware: bool = False  # only comparable within one device
    # Peak memory is also only comparable within one way of measuring it (peak_memory_kind).
    per_memory_kind: bool = False
    # Measured at inference: a row whose compression only simulated its kernel (fake-quantized
    # or masked dense weights) ran the dense float model, so its point is drawn hollow and kept
    # off the Pareto front: a simulated speedup is never shown as a measured one.
    inference: bool = False
    # A wall-clock time: a row timed while other jobs shared its device (concurrent_jobs > 1)
    # ran slower than it would alone, so it is drawn hollow and kept off the front too.
    timed: bool = False


# What a user waits for before a trained model exists: the training loop and the data-driven
# initialisation before it (PiSSA's SVD, EVA/CorDA/LoRA-GA/calibration passes), which runs
# outside train_seconds (init_seconds also holds compression before training, e.g. GPTQ's
# calibration for a QLoRA-style pipeline). Rows written before init_seconds existed: the
# pipeline's total less its compression steps, which holds that initialisation too (and the
# time of any merge).
TIME_TO_TRAINED = "time_to_trained_seconds"
TIME_TO_TRAINED_DOC = (
    "seconds to a trained model: train_seconds + init_seconds (data-driven initialisation and "
    "compression before training); rows without init_seconds: pipeline_seconds - compress_seconds"
)

COST_AXES = (
    CostAxis("trainable_params", "trainable parameters", log=True),
    CostAxis("peak_memory_bytes", "peak memory (MiB)", scale=2**20, hardware=True, per_memory_kind=True),
    CostAxis(
        TIME_TO_TRAINED, "time to trained model (s): training + data-driven initialisation", hardware=True, timed=True
    ),
    # The size a deployment stores: the compressed format's bytes where a method reports them.
    CostAxis("stored_model_bytes", "model size (MiB)", scale=2**20),
    CostAxis("flops_per_sample", "forward GFLOPs per sample", scale=1e9),
    CostAxis("latency_bs1_p50_ms", "inference latency at batch 1, p50 (ms)", hardware=True, inference=True, timed=True),
    # Causal LMs: the wait for the first generated token, and the time per generated token at the
    # eval batch (the inverse of throughput, so that lower is better on every axis).
    CostAxis("ttft_bs1_p50_ms", "time to first token at batch 1, p50 (ms)", hardware=True, inference=True, timed=True),
    CostAxis(
        "ms_per_generated_token", "ms per generated token at the eval batch", hardware=True, inference=True, timed=True
    ),
)

# Written by the kernel profiler of another part of the harness; old stores lack it.
ADAPTER_SHARE = "adapter_overhead_share"
# How many jobs shared the device while the row was timed; old stores lack it (null: unknown).
CONCURRENT_JOBS = "concurrent_jobs"
# The columns besides `config` that say which configuration a row is (harness.results.grouping).
GROUP_COLUMNS = [*grouping.FALLBACK_COLUMNS, "device", "device_name"]
DOCS = {c.name: c.doc for c in COLUMNS}
DOCS.setdefault(ADAPTER_SHARE, "share (0..1) of the profiled time spent in the method's adapter modules")
DOCS.setdefault(CONCURRENT_JOBS, "jobs that shared the device while this run was timed (1: alone; null: not recorded)")
# Shown in their own sections of a run page rather than in its tables of values.
LONG_COLUMNS = ("config", "metrics", "method_params", "pipeline_costs", "eval_settings", "traceback")
KERNEL_TOP = 15


# ----------------------------------------------------------------------------- values and units


def _plain(value):
    """None for a missing value (None, NaN, NaT), the value otherwise."""
    if value is None or value is pd.NaT:
        return None
    return None if isinstance(value, float) and math.isnan(value) else value


def _fmt(value, column: str = "") -> str:
    if _plain(value) is None:
        return "–"
    if column in ("score", "best_score"):
        return f"{value:.4f}"
    if column == "trainable_params" or (column.endswith(("_params", "_bytes")) and isinstance(value, (int, float))):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


# Units only apply to numbers (method_params ends in _params but is JSON).
NUMERIC = {c.name for c in COLUMNS if pa.types.is_integer(c.type) or pa.types.is_floating(c.type)} | {ADAPTER_SHARE}


def _unit(column: str) -> str:
    """The unit a numeric column's name implies (the schema puts units in names); '' for none."""
    if column not in NUMERIC:
        return ""
    counts = {"train_samples": "samples", "eval_samples": "samples", "train_steps": "steps", "train_tokens": "tokens"}
    if column in counts:
        return counts[column]
    if column.endswith("_bytes"):
        return "bytes"
    if column.endswith("_seconds"):
        return "s"
    if column.endswith("_ms"):
        return "ms"
    if column.endswith("_per_s"):
        return column.split("_")[-3] + "/s"  # train_samples_per_s -> samples/s
    if column.endswith(("_share", "sparsity")) or column == "mfu":
        return "%"
    if "flops" in column:
        return "FLOPs"
    if "bits" in column:
        return "bits"
    if column.endswith("_params"):
        return "parameters"
    return ""


# A run page's cost tables, with the settings that qualify a measurement beside it (the kind of
# peak memory, the latency batch). A column with a unit that no group names goes to "other".
COST_GROUPS = (
    (
        "training",
        (
            "train_samples",
            "train_steps",
            "train_tokens",
            "train_seconds",
            "train_samples_per_s",
            "train_tokens_per_s",
            "trainable_params",
            "total_params",
            "train_flops",
            "train_flops_per_step",
            "mfu",
            "mfu_flops_kind",
            ADAPTER_SHARE,
            "final_train_loss",
            "concurrent_jobs",
        ),
    ),
    (
        "training memory",
        (
            "peak_memory_bytes",
            "peak_memory_kind",
            "peak_process_memory_bytes",
            "peak_memory_reserved_bytes",
            "parameter_bytes",
            "gradient_bytes",
            "optimizer_state_bytes",
            "activation_bytes",
        ),
    ),
    (
        "model and pipeline",
        (
            "model_bytes",
            "model_memory_bytes",
            "adapter_bytes",
            "compressed_model_bytes",
            "bits_per_parameter",
            "weight_bits",
            "weight_sparsity",
            "compression_kernel",
            "flops_per_sample",
            "init_seconds",
            "compress_seconds",
            "pipeline_seconds",
        ),
    ),
    (
        "inference",
        (
            "latency_bs1_p50_ms",
            "latency_bs1_p90_ms",
            "latency_batch_p50_ms",
            "latency_batch_p90_ms",
            "latency_batch_size",
            "latency_repeats",
            "latency_timer",
            "eval_samples",
            "eval_seconds",
        ),
    ),
    (
        "generation",
        (
            "ttft_bs1_p50_ms",
            "ttft_batch_p50_ms",
            "generation_bs1_tokens_per_s",
            "generation_batch_tokens_per_s",
            "generation_batch_size",
            "generation_new_tokens",
            "generation_repeats",
        ),
    ),
)
_GROUPED = {c for _, columns in COST_GROUPS for c in columns}
COST_GROUPS += (("other", tuple(c.name for c in COLUMNS if _unit(c.name) and c.name not in _GROUPED)),)
COST_COLUMNS = tuple(c for _, columns in COST_GROUPS for c in columns)


def _with_unit(column: str, value) -> str:
    """A value as its unit reads best: bytes also in MiB, shares as percentages."""
    if _plain(value) is None:
        return "–"
    unit = _unit(column)
    if unit == "bytes":
        return f"{int(value):,} ({value / 2**20:,.1f} MiB)"
    if unit == "%":
        return f"{100 * value:.2f}"
    if unit == "FLOPs":
        return f"{value:,.0f} ({value / 1e9:,.3g} G)"
    if unit in ("parameters", "samples", "steps", "tokens"):
        return f"{int(value):,}"
    return _fmt(value, column)


def _pretty_json(text) -> str:
    if _plain(text) is None:
        return ""
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        return str(text)  # not JSON after all: shown as stored


def _slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))


def run_page(job_hash, run_id) -> str:
    return f"run-{_slug(job_hash)}-{_slug(run_id)}.html"


def pareto_page(suite, task) -> str:
    return f"pareto-{_slug(suite)}-{_slug(task)}.html"


# ----------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Cell:
    text: str
    sort: object = ""  # the value the header-click sorter compares
    text_align: bool = False
    links: tuple[tuple[str, str, str], ...] = ()  # (label, href, tooltip), shown instead of the text
    title: str = ""
    wrap: bool = False  # long text (an error message) wraps instead of widening the table
    more: int = 0  # items left out of `links`, shown as "+N"


@dataclass(frozen=True)
class Table:
    headers: tuple[tuple[str, bool, str], ...]  # (label, text aligned, tooltip)
    rows: list[tuple[str, list[Cell]]]  # (row class, cells)


def _number(value, column: str) -> Cell:
    value = _plain(value)
    return Cell(_fmt(value, column), "" if value is None else value)


def _text(value, href: str | None = None) -> Cell:
    value = _plain(value)
    text = "–" if value is None else str(value)
    return Cell(text, text, True, ((text, href, ""),) if href else ())


# ----------------------------------------------------------------------------- Pareto plots


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


def _points(rows: pd.DataFrame, axis: CostAxis) -> pd.DataFrame:
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
    front[~hollow] = pareto_mask(costs[~hollow], data["score"].to_numpy(float)[~hollow])
    return data.assign(_cost=costs, _hollow=hollow, _front=front, _simulated=simulated, _shared=shared)


def _hover(data: pd.DataFrame, axis: CostAxis, metric: str) -> list[str]:
    # A comprehension over columns: iterrows costs ~50 µs a row, which thousands of runs feel.
    # Plotly renders hover text as HTML: the names in it are escaped.
    return [
        f"<b>{plotly_text(method)}</b> seed {seed}<br>{plotly_text(metric)} {score:.4f}<br>{plotly_text(axis.title)}: {cost:,.4g}"
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


def _figure(data: pd.DataFrame, axis: CostAxis, metric: str, title: str) -> dict:
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
        "title": {"text": title},
        "height": 440,  # title: escaped by the caller "margin": {"l": 60, "r": 20, "t": 70, "b": 50},
        "xaxis": {
            "title": {"text": axis.title + (" (log)" if axis.log else "")},
            "type": "log" if axis.log else "linear",
        },
        # Scores near zero (a small LM on GSM8K) sit on the axis, not mid-plot.
        "yaxis": {"title": {"text": metric}, "rangemode": "tozero"},
        "legend": {"title": {"text": "method"}},
    }
    return {"data": traces, "layout": layout}


def _front_table(data: pd.DataFrame, axis: CostAxis) -> Table:
    headers = (
        ("method", True, ""),
        ("seed", False, ""),
        ("score", False, ""),
        (axis.title, False, ""),
        ("model", True, ""),
        ("kernel", True, DOCS["compression_kernel"]),
        ("run", True, ""),
    )
    rows = []
    for r in data[data["_front"]].sort_values(["_cost", "score"]).to_dict("records"):
        rows.append(
            (
                "",
                [
                    _text(r["method"]),
                    _number(r["seed"], "seed"),
                    _number(r["score"], "score"),
                    Cell(f"{r['_cost']:,.4g}", r["_cost"]),
                    _text(r["model"]),
                    _text("simulated" if r["_simulated"] else r["compression_kernel"]),
                    _text(r["job_hash"], r["_page"] if r["_paged"] else None),
                ],
            )
        )
    return Table(headers, rows)


def _panel_groups(ok: pd.DataFrame, axis: CostAxis):
    """(where, rows) per comparable group: hardware costs one group per device (and memory kind)."""
    if not axis.hardware:
        return [("", ok)]
    keys = ["device_name", "peak_memory_kind"] if axis.per_memory_kind else ["device_name"]
    groups = ok.groupby(keys, dropna=False, sort=True)
    return [(" / ".join(str(_plain(k) or "unknown") for k in key), part) for key, part in groups]


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


def _axis_points(ok: pd.DataFrame):
    """(axis, where, points) for every plot of one task's successful runs."""
    ok = ok[PLOT_COLUMNS]
    for axis in COST_AXES:
        # An axis on which no run has a positive cost says nothing (e.g. training time when
        # nothing trained); a log axis cannot show zeros at all.
        for where, part in _panel_groups(ok, axis):
            if (part[axis.column] > 0).any():  # not e.g. the runs that trained nothing, on a training axis
                yield axis, where, _points(part.reset_index(drop=True), axis)


def _panels(ok: pd.DataFrame, suite: str, task: str, metric: str) -> list[Panel]:
    panels = []
    for axis, where, data in _axis_points(ok):
        title = plotly_text(f"{suite}/{task}: {metric} vs {axis.title}") + (
            f"<br><sup>on {plotly_text(where)}</sup>" if where else ""
        )
        figure = _figure(data, axis, metric, title)
        hollow, shared = int(data["_hollow"].sum()), int(data["_shared"].sum())
        panels.append(Panel(f"fig-{len(panels)}", axis, title, where, figure, _front_table(data, axis), hollow, shared))
    return panels


# ----------------------------------------------------------------------------- leaderboard

LEADERBOARD = (  # (key, label, text aligned)
    ("method", "method", True),
    ("model", "model", True),
    ("settings", "settings", True),
    ("mean_score", "mean ± 95% CI (n)", False),
    ("best_score", "best seed", False),
    ("n_runs", "runs (seed)", False),
    ("trainable_params", "trainable", False),
    ("trainable_pct", "trainable %", False),
    ("peak_memory_mib", "peak mem MiB", False),
    (TIME_TO_TRAINED, "time to trained model s", False),
    ("latency_bs1_p50_ms", "lat bs1 p50 ms", False),
    ("ttft_bs1_p50_ms", "TTFT bs1 ms", False),
    ("ms_per_generated_token", "ms/gen token", False),
    ("stored_model_mib", "stored MiB", False),
    ("gflops", "GFLOPs/sample", False),
    ("adapter_overhead_pct", "adapter overhead %", False),
    ("compression_kernel", "kernel", True),
    ("device_name", "device", True),
)
RUN_LINKS = 8  # per leaderboard line
# The costs of a line: the median over its runs, so that the seed with the best score does not
# lend it its costs, and one slow run (a busy machine) does not move the line much.
MEDIAN_COSTS = (
    "trainable_params",
    "total_params",
    "peak_memory_bytes",
    TIME_TO_TRAINED,
    "latency_bs1_p50_ms",
    "ttft_bs1_p50_ms",
    "ms_per_generated_token",
    "stored_model_bytes",
    "flops_per_sample",
    ADAPTER_SHARE,
)
LEADERBOARD_DOCS = {
    "settings": "the settings in which lines of this method and model differ (all other settings are the same)",
    "mean_score": "mean score over the line's seeds with a 95% Student t confidence interval (n seeds); lines are "
    "ranked by it. Seed noise only: the evaluation set's own sampling noise is not in it",
    "best_score": "the best seed's score, for reference only: a maximum over seeds on the evaluation split "
    "is not an estimate of the configuration's score",
    "n_runs": "runs of this configuration: one per seed (every other setting and the device are the same)",
    "trainable_params": DOCS["trainable_params"] + " (median over the line's runs)",
    "peak_memory_mib": DOCS["peak_memory_bytes"] + " (median over the line's runs)",
    TIME_TO_TRAINED: TIME_TO_TRAINED_DOC + " (median over the line's runs)",
    "latency_bs1_p50_ms": DOCS["latency_bs1_p50_ms"] + " (median over the line's runs)",
    "ttft_bs1_p50_ms": DOCS["ttft_bs1_p50_ms"] + " (median over the line's runs)",
    "stored_model_mib": "compressed_model_bytes, or model_bytes, in MiB (median over the line's runs)",
    "gflops": DOCS["flops_per_sample"],
    "adapter_overhead_pct": DOCS[ADAPTER_SHARE],
    "compression_kernel": DOCS["compression_kernel"],
    "device_name": DOCS["device_name"],
}


# Settings that the method and model columns already show.
def _median(runs: list[dict], column: str) -> float | None:
    values = [r.get(column) for r in runs if r.get(column) is not None]
    return float(np.median(values)) if values else None


def _line_values(runs: list[dict], ci: MeanCI | None, settings: str) -> dict:
    """The leaderboard's values for one configuration: the seed mean, the best seed, and the
    median of each cost over its runs."""
    costs = {c: _median(runs, c) for c in MEDIAN_COSTS}
    mib = lambda column: None if costs[column] is None else costs[column] / 2**20  # noqa: E731
    total, trainable, share = costs["total_params"], costs["trainable_params"], costs[ADAPTER_SHARE]
    scores = [r["score"] for r in runs if r["score"] is not None]
    kernels = sorted({r["compression_kernel"] for r in runs if r.get("compression_kernel") is not None})
    return {
        "method": runs[0]["method"],
        "model": runs[0]["model"],
        "device_name": runs[0]["device_name"],
        "settings": settings,
        "compression_kernel": "/".join(kernels) or None,
        **{
            k: costs[k]
            for k in (
                "trainable_params",
                TIME_TO_TRAINED,
                "latency_bs1_p50_ms",
                "ttft_bs1_p50_ms",
                "ms_per_generated_token",
            )
        },
        "best_score": max(scores) if scores else None,
        "mean_score": ci,
        "n_runs": len(runs),
        "trainable_pct": 100.0 * trainable / total if trainable is not None and total else None,
        "peak_memory_mib": mib("peak_memory_bytes"),
        "stored_model_mib": mib("stored_model_bytes"),
        "gflops": None if costs["flops_per_sample"] is None else costs["flops_per_sample"] / 1e9,
        "adapter_overhead_pct": None if share is None else 100.0 * share,
    }


def _line_cells(values: dict, best: dict, runs: list[dict], keys: list[str]) -> list[Cell]:
    cells = []
    for key in keys:
        value = values[key]
        if key == "method":
            cells.append(_text(value, best["_page"] if best["_paged"] else None))
        elif key == "mean_score":
            title = (
                "" if value is None or value.low is None else f"95% CI [{value.low:.4f}, {value.high:.4f}], n={value.n}"
            )
            cells.append(Cell("–" if value is None else str(value), "" if value is None else value.mean, title=title))
        elif key == "n_runs":
            # A link per run (a few at most), labelled by its seed; the rest are counted.
            links = tuple(
                (
                    f"s{r['seed']}",
                    r["_page"],
                    f"{r['method']} seed {r['seed']}, score {_fmt(r['score'], 'score')}, job {r['job_hash']}",
                )
                for r in runs
                if r["_paged"]
            )[:RUN_LINKS]
            cells.append(Cell(str(value), value, False, links, f"{value} run(s)", more=value - len(links)))
        elif key == "compression_kernel" and value == "simulated":
            cells.append(Cell("simulated", value, True, title="simulated kernel: the dense float model ran"))
        elif key in ("model", "settings", "compression_kernel", "device_name"):
            cells.append(_text(value))
        else:
            cells.append(_number(value, key))
    return cells


def _differing_settings(groups: list[list[dict]]) -> list[str | None]:
    return grouping.differing([grouping.settings(runs[0]) for runs in groups])


def _leaderboard(ok: pd.DataFrame, records: list[dict]) -> Table:
    """One line per configuration (every setting the same but the seed, on one device), ranked
    by its seed mean: the best seed is shown, but a maximum over seeds on the evaluation split
    would reward the line with the most draws."""
    groups, bests = [], []
    for idx in ok.groupby("_group", sort=False).indices.values():
        runs = sorted((records[i] for i in idx), key=lambda r: (r["seed"] is None, r["seed"]))
        groups.append(runs)
        bests.append(max(runs, key=lambda r: r["score"] if r["score"] is not None else -math.inf))
    lines = []
    for runs, best, settings in zip(groups, bests, _differing_settings(groups)):
        scores = [r["score"] for r in runs if r["score"] is not None]
        lines.append((_line_values(runs, mean_ci(scores) if scores else None, settings), best, runs))
    lines.sort(
        key=lambda line: -math.inf if line[0]["mean_score"] is None else line[0]["mean_score"].mean, reverse=True
    )
    # A column no line has a value in (latency before anything measured it, TTFT on GLUE) is left out.
    keys = [k for k, _, _ in LEADERBOARD if k in ("method", "mean_score") or any(v[k] is not None for v, _, _ in lines)]
    headers = tuple((label, text, LEADERBOARD_DOCS.get(k, "")) for k, label, text in LEADERBOARD if k in keys)
    rows = [("best" if i == 0 else "", _line_cells(v, best, runs, keys)) for i, (v, best, runs) in enumerate(lines)]
    return Table(headers, rows)


def _failed_table(records: list[dict]) -> Table:
    headers = (("method", True, ""), ("seed", False, ""), ("model", True, ""), ("job", True, ""), ("error", True, ""))
    rows = [
        (
            "failed",
            [
                _text(r["method"]),
                _number(r["seed"], "seed"),
                _text(r["model"]),
                _text(r["job_hash"], r["_page"] if r["_paged"] else None),
                Cell(str(r["error"] or "–"), str(r["error"] or ""), True, wrap=True),
            ],
        )
        for r in records
    ]
    return Table(headers, rows)


# ----------------------------------------------------------------------------- sections


@dataclass
class TaskSection:
    suite: str
    task: str
    metric: str
    anchor: str
    page: str
    rows: list[dict]  # ok runs, best score first
    failed: list[dict]
    leaderboard: Table | None = None
    failed_table: Table | None = None
    panels: list[Panel] = field(default_factory=list)

    @property
    def figures(self) -> list[dict]:
        return [p.figure for p in self.panels]

    @property
    def axes(self) -> list[CostAxis]:
        return list(dict.fromkeys(p.axis for p in self.panels))


def _time_to_trained(df: pd.DataFrame) -> pd.Series:
    """TIME_TO_TRAINED per row (see its doc)."""
    init = df["init_seconds"] if "init_seconds" in df else pd.Series(np.nan, index=df.index)
    known = df["train_seconds"] + init
    old = (df["pipeline_seconds"] - df["compress_seconds"].fillna(0)).clip(lower=df["train_seconds"])
    return known.fillna(old).fillna(df["train_seconds"])


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Derived columns the pages need; every run gets a page until `limit_run_pages` says otherwise."""
    for column in (ADAPTER_SHARE, CONCURRENT_JOBS):  # stores written before these columns existed
        if column not in df:
            df = df.assign(**{column: np.nan})
    pages = [run_page(j, r) for j, r in zip(df["job_hash"], df["run_id"])]
    columns = [c for c in ("config", *GROUP_COLUMNS) if c in df]
    groups = [grouping.group_key({k: _plain(v) for k, v in r.items()}) for r in df[columns].to_dict("records")]
    return df.assign(
        stored_model_bytes=df["compressed_model_bytes"].fillna(df["model_bytes"]),
        ms_per_generated_token=1e3 / df["generation_batch_tokens_per_s"],
        **{TIME_TO_TRAINED: _time_to_trained(df)},
        _page=pages,
        _paged=True,
        _group=groups,
    )


def _paged_jobs(group: pd.DataFrame, limit: int) -> list[str]:
    """The runs of one task that get a page: each leaderboard line's best run (its method links it) and every
    Pareto-optimal run (what the index and the plots single out), then the best by score up
    to `limit` (more where those alone exceed it); failed runs, for their traceback, up to `limit`."""
    ok = group[group["status"] == "ok"].sort_values("score", ascending=False, kind="mergesort")
    chosen = dict.fromkeys(ok.drop_duplicates("_group")["job_hash"])
    for _, _, points in _axis_points(ok):
        chosen.update(dict.fromkeys(points.loc[points["_front"], "job_hash"]))
    for job in ok["job_hash"]:
        if len(chosen) >= limit:
            break
        chosen[job] = None
    return [*chosen, *group.loc[group["status"] != "ok", "job_hash"][:limit]]


def limit_run_pages(df: pd.DataFrame, limit: int | None) -> pd.DataFrame:
    """Mark which runs get a page (`_paged`), at most about `limit` per task; None: all."""
    if limit is None:
        return df
    paged = [job for _, group in df.groupby(["suite", "task"]) for job in _paged_jobs(group, limit)]
    return df.assign(_paged=df["job_hash"].isin(paged))


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts with None for every missing value (NaN in float and object columns alike);
    through Arrow, which maps NaN to null and is several times faster than pandas here."""
    return pa.Table.from_pandas(df, preserve_index=False).to_pylist()


def build_sections(df: pd.DataFrame) -> list[TaskSection]:
    if "_page" not in df:
        df = prepare(df)
    sections = []
    for (suite, task), group in df.groupby(["suite", "task"], sort=True):
        ok = (
            group[group["status"] == "ok"]
            .sort_values("score", ascending=False, kind="mergesort")
            .reset_index(drop=True)
        )
        failed = group[group["status"] != "ok"].reset_index(drop=True)
        metric = ok["metric"].iloc[0] if len(ok) else ""
        rows, failed_rows = _records(ok), _records(failed)
        sections.append(
            TaskSection(
                suite,
                task,
                metric,
                _slug(f"{suite}-{task}"),
                pareto_page(suite, task),
                rows,
                failed_rows,
                _leaderboard(ok, rows) if len(ok) else None,
                _failed_table(failed_rows) if failed_rows else None,
                _panels(ok, suite, task, metric) if len(ok) else [],
            )
        )
    return sections


# ----------------------------------------------------------------------------- benchmarks


@dataclass
class BenchmarkSection:
    name: str
    anchor: str
    columns: list[str]
    rows: list[dict]
    figure: dict | None


def benchmark_sections(results_dir: str | os.PathLike) -> list[BenchmarkSection]:
    """Tables written by benchmarks/ under <results>/_benchmarks/: a table and a bar chart of
    every *_ms_p50 column per method (latest run of each file)."""
    import pyarrow.parquet as pq

    sections = []
    for path in sorted((Path(results_dir) / "_benchmarks").glob("*.parquet")):
        df = pq.read_table(path).to_pandas()
        if "created_at" in df and len(df):
            df = df[df["created_at"] == df["created_at"].max()]
        timed = [c for c in df.columns if c.endswith("_ms_p50")]
        figure = None
        if timed and "method" in df:
            figure = {
                "data": [
                    {
                        "type": "bar",
                        "name": c.removesuffix("_ms_p50"),
                        "x": df["method"].tolist(),
                        "y": [_plain(v) for v in df[c].tolist()],
                    }
                    for c in timed
                ],
                "layout": {
                    "barmode": "group",
                    "yaxis": {"title": {"text": "ms (median)"}},
                    "height": 420,
                    "title": {"text": f"{path.stem}: time per method"},
                    "margin": {"l": 60, "r": 20, "t": 60, "b": 120},
                },
            }
        shown = [c for c in df.columns if c not in ("created_at", "git_commit", "torch_version", "peft_version")]
        rows = [{c: _plain(v) for c, v in r.items()} for r in df[shown].to_dict("records")]
        sections.append(BenchmarkSection(path.stem, f"bench-{path.stem}", shown, rows, figure))
    return sections


# ----------------------------------------------------------------------------- run pages


@cache
def _value_row_parts(column: str, with_unit: bool) -> tuple[str, str]:
    """The HTML around a value in a run page's tables: the same on every page, so built once."""
    value_class = "" if with_unit else ' class="text wrap"'  # a number, or a text that may be long
    head = f'<tr><td class="text"><code>{escape(column)}</code></td><td{value_class}>'
    unit = f'<td class="text">{escape(_unit(column))}</td>' if with_unit else ""
    return head, f'</td>{unit}<td class="text wrap">{escape(DOCS.get(column, ""))}</td></tr>'


def _value_rows(record: dict, columns, with_unit: bool = True):
    """Table rows (column, value[, unit], meaning) as HTML. Built here rather than in a template
    loop: on 10,000 run pages, escaping every static cell again was most of the report's time."""
    from markupsafe import Markup

    rows = []
    for column in columns:
        head, tail = _value_row_parts(column, with_unit)
        rows.append(head + escape(_with_unit(column, record.get(column))) + tail)
    return Markup("".join(rows))


def _pipeline_rows(text) -> list[dict]:
    try:
        steps = json.loads(text) if _plain(text) is not None else []
    except ValueError:
        return []
    return [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []


def _kernel_phase(table: pd.DataFrame, phase: str) -> dict:
    """Top kernels of one phase and a bar chart of its kernel time by category."""
    rows = table.sort_values("total_us", ascending=False, kind="mergesort")
    by_category = rows.groupby("category", dropna=False)["total_us"].sum().sort_values()  # largest drawn on top
    figure = {
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
    top = [{k: _plain(v) for k, v in r.items()} for r in rows.head(KERNEL_TOP).to_dict("records")]
    return {
        "phase": phase,
        "rows": top,
        "n": len(rows),
        "total_ms": float(rows["total_us"].sum()) / 1e3,
        "figure": figure,
    }


def kernel_profile(path: Path | None) -> list[dict]:
    """Per phase (train, then inference) the kernel table of one job; [] without a profile."""
    if path is None:
        return []
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path).to_pandas()
    except (OSError, ValueError) as exc:  # a truncated or foreign file (pyarrow's ArrowInvalid is a ValueError)
        print(f"harness: warning: skipped kernel table {path}: {first_line(exc)}", file=sys.stderr)
        return []
    if "phase" not in table.columns:
        print(f"harness: warning: skipped kernel table {path}: no 'phase' column", file=sys.stderr)
        return []
    order = {"train": 0, "inference": 1}
    phases = sorted(table["phase"].dropna().unique(), key=lambda p: (order.get(p, 2), p))
    return [_kernel_phase(table[table["phase"] == phase], phase) for phase in phases]


def _kernel_files(results_dir: str | os.PathLike) -> dict[str, Path]:
    """Kernel tables by "<job_hash>-<run_id>" (one per run) and by job hash: the table of the
    run the store's rule picks for that job (latest ok, as the report's rows), none if that
    run was not profiled. Tables of older stores, `<job_hash>.parquet`, serve their job."""
    folder = Path(results_dir) / "_kernels"
    if not folder.is_dir():
        return {}
    files = {path.stem: path for path in folder.glob("*.parquet")}
    per_run = {stem for stem in files if "-" in stem}
    if per_run:
        from harness.results.store import STATUS_COLUMNS

        jobs = {stem.partition("-")[0] for stem in per_run}
        rows = read_results(results_dir, columns=STATUS_COLUMNS)
        latest = latest_per_job(rows[rows["job_hash"].isin(jobs)])
        for job, run in zip(latest["job_hash"], latest["run_id"]):
            if f"{job}-{run}" in files:
                files[job] = files[f"{job}-{run}"]
    return files


# ----------------------------------------------------------------------------- rendering


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness.site", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
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
    figures = {f"bench-fig-{i}": b.figure for i, b in enumerate(benchmarks) if b.figure}
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
            details=_value_rows(record, scalar, with_unit=False),
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
    sections = build_sections(df)
    kernel_files = _kernel_files(results_dir)
    previous = _manifest(out)
    planned = {
        "index.html",
        "plotly.min.js",
        *(s.page for s in sections),
        *(r["_page"] for s in sections for r in s.rows + s.failed if r["_paged"]),
    }
    # Listed before they are written: a report killed half-way leaves no page it cannot clean up.
    _write_manifest(out, previous | planned)
    written = {_write_plotly_js(out)}
    for section in sections:
        written.add(_write(out / section.page, render_pareto(section, source)))
        for record in (r for r in section.rows + section.failed if r["_paged"]):
            kernels = kernel_profile(kernel_files.get(record["job_hash"]))
            written.add(_write(out / record["_page"], render_run(record, section, kernels, source)))
    n_failed = int((df["status"] != "ok").sum()) if len(df) else 0
    index = render_index(sections, benchmark_sections(results_dir), len(df), n_failed, source)
    with atomic_write(out / "index.html", "w") as f:  # last: it links to the pages above
        f.write(index)
    _remove_stale(out, previous, written | {"index.html"})
    return out / "index.html", len(df)
