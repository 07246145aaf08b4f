"""`harness report`: a result store -> one self-contained static HTML page.

Per suite and task: a leaderboard of runs and Pareto plots of the task metric against
trainable parameters, peak memory and training time, with the Pareto-optimal runs
marked and every point's hover text naming its run. plotly.js is inlined so the page
opens offline from disk. Hardware-dependent costs (memory, time) are only compared
within one device and one kind of memory measurement.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from harness import __version__
from harness.atomic import atomic_write
from harness.pareto import pareto_mask
from harness.store import latest_per_job, read_results


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


COST_AXES = (
    CostAxis("trainable_params", "trainable parameters", log=True),
    CostAxis("peak_memory_bytes", "peak memory (MiB)", scale=2**20, hardware=True, per_memory_kind=True),
    CostAxis("train_seconds", "training time (s)", hardware=True),
    # The size a deployment stores: the compressed format's bytes where a method reports them.
    CostAxis("stored_model_bytes", "model size (MiB)", scale=2**20),
    CostAxis("flops_per_sample", "forward GFLOPs per sample", scale=1e9),
    CostAxis("latency_bs1_p50_ms", "inference latency at batch 1, p50 (ms)", hardware=True, inference=True),
    # Causal LMs: the wait for the first generated token, and the time per generated token at the
    # eval batch (the inverse of throughput, so that lower is better on every axis).
    CostAxis("ttft_bs1_p50_ms", "time to first token at batch 1, p50 (ms)", hardware=True, inference=True),
    CostAxis("ms_per_generated_token", "ms per generated token at the eval batch", hardware=True, inference=True),
)

TABLE_COLUMNS = (
    ("method", "method"), ("seed", "seed"), ("score", "score"), ("trainable_params", "trainable"),
    ("trainable_pct", "trainable %"), ("peak_memory_mib", "peak mem MiB"), ("train_seconds", "train s"),
    ("train_samples_per_s", "samples/s"), ("latency_bs1_p50_ms", "lat bs1 p50 ms"),
    ("latency_batch_p50_ms", "lat batch p50 ms"), ("gflops", "GFLOPs/sample"), ("model_mib", "model MiB"),
    ("stored_model_mib", "stored MiB"), ("bits_per_parameter", "bits/param"), ("weight_sparsity", "sparsity"),
    ("compression_kernel", "kernel"), ("ttft_bs1_p50_ms", "TTFT bs1 ms"),
    ("generation_bs1_tokens_per_s", "gen tok/s bs1"), ("generation_batch_tokens_per_s", "gen tok/s batch"),
    ("num_fewshot", "shots"), ("adapter_mib", "adapter MiB"),
    ("optimizer_state_mib", "optim state MiB"), ("model", "model"),
    ("device_name", "device"), ("job_hash", "job"),
)


@dataclass
class TaskSection:
    suite: str
    task: str
    metric: str
    anchor: str
    rows: list[dict]
    failed: list[dict]
    figures: list[dict] = field(default_factory=list)


def _simulated(row: pd.Series) -> bool:
    return row.get("compression_kernel") == "simulated"


def _hover(row: pd.Series, axis: CostAxis, metric: str) -> str:
    cost = row[axis.column] / axis.scale
    note = "<br><i>simulated kernel: the dense float model ran</i>" if axis.inference and _simulated(row) else ""
    return (
        f"<b>{row['method']}</b> seed {row['seed']}<br>{metric} {row['score']:.4f}<br>"
        f"{axis.title}: {cost:,.4g}<br>model {row['model']}<br>job {row['job_hash']} run {row['run_id']}{note}"
    )


def _figure(ok: pd.DataFrame, axis: CostAxis, metric: str, title: str) -> dict:
    import plotly.graph_objects as go

    data = ok.dropna(subset=[axis.column, "score"])
    if axis.log:
        data = data[data[axis.column] > 0]
    data = data.reset_index(drop=True)
    costs = data[axis.column].to_numpy(float) / axis.scale
    hollow = data.apply(_simulated, axis=1).to_numpy(bool) if axis.inference and len(data) else np.zeros(len(data), bool)
    on_front = np.zeros(len(data), bool)
    measured = ~hollow
    on_front[measured] = pareto_mask(costs[measured], data["score"].to_numpy(float)[measured])
    fig = go.Figure()
    for method, group in data.groupby("method", sort=True):
        idx = data.index.get_indexer(group.index)
        front = on_front[idx]
        symbols = ["star" if f else "circle-open" if h else "circle" for f, h in zip(front, hollow[idx])]
        fig.add_trace(go.Scatter(
            x=costs[idx], y=group["score"], mode="markers", name=method,
            marker=dict(size=[14 if f else 9 for f in front], symbol=symbols,
                        line=dict(width=[1.5 if f else 0 for f in front], color="black")),
            hovertext=[_hover(r, axis, metric) + ("<br><b>Pareto-optimal</b>" if f else "") for (_, r), f in zip(group.iterrows(), front)],
            hoverinfo="text",
        ))
    if on_front.any():
        order = sorted(zip(costs[on_front], data["score"].to_numpy(float)[on_front]))
        fig.add_trace(go.Scatter(
            x=[c for c, _ in order], y=[s for _, s in order], mode="lines", name="Pareto front",
            line=dict(shape="hv", dash="dot", color="black"), hoverinfo="skip",
        ))
    fig.update_layout(
        title=title, xaxis_title=axis.title + (" (log)" if axis.log else ""), yaxis_title=metric,
        xaxis_type="log" if axis.log else "linear", template="plotly_white", height=420,
        yaxis_rangemode="tozero",  # scores near zero (a small LM on GSM8K) sit on the axis, not mid-plot
        margin=dict(l=60, r=20, t=70, b=50), legend=dict(title="method"),
    )
    return json.loads(fig.to_json())


def _table_row(row: pd.Series) -> dict:
    total = _plain(row["total_params"])
    trainable = _plain(row["trainable_params"])
    mib = lambda column: None if _plain(row[column]) is None else row[column] / 2**20  # noqa: E731
    return {
        **{k: _plain(row.get(k)) for k in ("method", "seed", "score", "trainable_params", "train_seconds",
                                            "train_samples_per_s", "latency_bs1_p50_ms", "latency_batch_p50_ms",
                                            "bits_per_parameter", "weight_sparsity", "compression_kernel",
                                            "ttft_bs1_p50_ms", "generation_bs1_tokens_per_s",
                                            "generation_batch_tokens_per_s", "num_fewshot",
                                            "model", "device_name", "job_hash", "run_id", "metrics", "error")},
        "trainable_pct": 100.0 * trainable / total if trainable is not None and total else None,
        "gflops": None if _plain(row.get("flops_per_sample")) is None else row["flops_per_sample"] / 1e9,
        **{f"{name}_mib": mib(f"{name}_bytes")
           for name in ("peak_memory", "model", "stored_model", "adapter", "optimizer_state")},
    }


def build_sections(df: pd.DataFrame) -> list[TaskSection]:
    sections = []
    df = df.assign(
        stored_model_bytes=df["compressed_model_bytes"].fillna(df["model_bytes"]),
        ms_per_generated_token=1e3 / df["generation_batch_tokens_per_s"],
    )
    for (suite, task), group in df.groupby(["suite", "task"], sort=True):
        ok = group[group["status"] == "ok"].sort_values("score", ascending=False).reset_index(drop=True)
        failed = group[group["status"] != "ok"]
        metric = ok["metric"].iloc[0] if len(ok) else ""
        section = TaskSection(
            suite, task, metric, f"{suite}-{task}",
            [_table_row(r) for _, r in ok.iterrows()], [_table_row(r) for _, r in failed.iterrows()],
        )
        for axis in COST_AXES:
            # An axis on which no run has a positive cost says nothing (e.g. training time when
            # nothing trained); a log axis cannot show zeros at all.
            if not len(ok) or not (ok[axis.column] > 0).any():
                continue
            keys = ["device_name", "peak_memory_kind"] if axis.per_memory_kind else ["device_name"]
            groups = ok.groupby(keys, dropna=False) if axis.hardware else [(None, ok)]
            for key, part in groups:
                if not (part[axis.column] > 0).any():  # e.g. the runs that trained nothing, on a training axis
                    continue
                where = f"<br><sup>on {key[0]}</sup>" if key else ""
                section.figures.append(_figure(part.reset_index(drop=True), axis, metric, f"{suite}/{task}: {metric} vs {axis.title}{where}"))
        sections.append(section)
    return sections


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
    import plotly.graph_objects as go
    import pyarrow.parquet as pq

    sections = []
    for path in sorted((Path(results_dir) / "_benchmarks").glob("*.parquet")):
        df = pq.read_table(path).to_pandas()
        if "created_at" in df and len(df):
            df = df[df["created_at"] == df["created_at"].max()]
        timed = [c for c in df.columns if c.endswith("_ms_p50")]
        figure = None
        if timed and "method" in df:
            fig = go.Figure([go.Bar(name=c.removesuffix("_ms_p50"), x=df["method"], y=df[c]) for c in timed])
            fig.update_layout(barmode="group", yaxis_title="ms (median)", template="plotly_white", height=420,
                              title=f"{path.stem}: time per method", margin=dict(l=60, r=20, t=60, b=120))
            figure = json.loads(fig.to_json())
        shown = [c for c in df.columns if c not in ("created_at", "git_commit", "torch_version", "peft_version")]
        rows = [{c: _plain(v) for c, v in r.items()} for r in df[shown].to_dict("records")]
        sections.append(BenchmarkSection(path.stem, f"bench-{path.stem}", shown, rows, figure))
    return sections


def _plain(value):
    """None for a missing value (None or NaN), the value otherwise."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def render(df: pd.DataFrame, source: str) -> str:
    import jinja2
    from plotly.offline import get_plotlyjs

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("harness", "templates"), autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    env.filters["fmt"] = _fmt
    sections = build_sections(df)
    benchmarks = benchmark_sections(source)
    figures = {f"fig-{i}-{j}": fig for i, s in enumerate(sections) for j, fig in enumerate(s.figures)}
    figures.update({f"bench-fig-{i}": b.figure for i, b in enumerate(benchmarks) if b.figure})
    return env.get_template("report.html.j2").render(
        sections=sections, benchmarks=benchmarks, columns=TABLE_COLUMNS, plotly_js=get_plotlyjs(), source=source,
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), version=__version__,
        n_runs=len(df), n_failed=int((df["status"] != "ok").sum()) if len(df) else 0,
        figures_json=json.dumps(figures),
    )


def _fmt(value, column: str = "") -> str:
    if _plain(value) is None:
        return "–"
    if column == "score":
        return f"{value:.4f}"
    if column == "trainable_params":
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def write_report(results_dir: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, int]:
    # One row per job: re-runs, retries and stores merged from several machines count once.
    df = latest_per_job(read_results(results_dir))
    html = render(df, str(results_dir))
    path = Path(out_dir) / "index.html"
    with atomic_write(path, "w") as f:
        f.write(html)
    return path, len(df)
