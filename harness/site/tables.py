"""The report's tables as view models (a Table of Cells, rendered by templates/_table.html.j2):
the run page's groups of costs, a task's leaderboard of configurations, its tuning groups, its
failed runs, and a Pareto plot's optimal runs."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from harness.results import grouping, versus
from harness.results.format import MISSING, fmt, number, unit
from harness.results.stats import MeanCI, mean_ci
from harness.results.values import direction_text, plain, score_direction
from harness.site.columns import ADAPTER_SHARE, DOCS, TIME_TO_TRAINED, TIME_TO_TRAINED_DOC, CostAxis
from harness.spec.schema import COLUMNS

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
COST_GROUPS += (("other", tuple(c.name for c in COLUMNS if unit(c.name) and c.name not in _GROUPED)),)
COST_COLUMNS = tuple(c for _, columns in COST_GROUPS for c in columns)


@dataclass(frozen=True)
class Cell:
    text: str
    sort: object = ""  # the value the header-click sorter compares
    text_align: bool = False
    links: tuple[tuple[str, str, str], ...] = ()  # (label, href, tooltip), shown instead of the text
    title: str = ""
    wrap: bool = False  # long text (an error message) wraps instead of widening the table
    more: int = 0  # items left out of `links`, shown as "+N"
    short: bool = False  # a short word ("tuned", "n.s."): no minimum width in the leaderboard
    separator: str = ""  # between links; a space when empty


@dataclass(frozen=True)
class Table:
    headers: tuple[tuple[str, bool, str], ...]  # (label, text aligned, tooltip)
    rows: list[tuple[str, list[Cell]]]  # (row class, cells)
    # Columns hidden until the reader asks for all of them (a toggle above the table): still in
    # the page, so sorting and the numbers stay where they were.
    extra: frozenset[int] = frozenset()
    note: str = ""  # a line under the table (why a column is absent)

    @property
    def labels(self) -> list[str]:
        return [label for label, _, _ in self.headers]

    @property
    def extra_labels(self) -> list[str]:
        return [label for i, (label, _, _) in enumerate(self.headers) if i in self.extra]


def number_cell(value, column: str) -> Cell:
    value = plain(value)
    return Cell(fmt(value, column), "" if value is None else value)


def text_cell(value, href: str | None = None) -> Cell:
    value = plain(value)
    text = MISSING if value is None else str(value)
    return Cell(text, text, True, ((text, href, ""),) if href else ())


def score_label(label: str, higher_is_better: bool) -> str:
    """A score column's label: as it is where higher is better, as every reader assumes; else it says so."""
    return label if higher_is_better else f"{label} ({direction_text(False)})"


def front_table(data: pd.DataFrame, axis: CostAxis, higher_is_better: bool = True) -> Table:
    headers = (
        ("method", True, ""),
        ("seed", False, ""),
        (score_label("score", higher_is_better), False, ""),
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
                    text_cell(r["method"], r["_page"] if r["_paged"] else None),
                    number_cell(r["seed"], "seed"),
                    number_cell(r["score"], "score"),
                    Cell(number(float(r["_cost"])), r["_cost"]),
                    text_cell(r["model"]),
                    text_cell("simulated" if r["_simulated"] else r["compression_kernel"]),
                    text_cell(r["job_hash"], r["_page"] if r["_paged"] else None),
                ],
            )
        )
    return Table(headers, rows)


# Beside the index's plot there is room for a front's method, seed, score and cost (the method
# links the run's page); its other columns wait behind the table's "all columns" toggle.
FRONT_EXTRA = ("model", "kernel", "run")


def front_summary(front: Table) -> Table:
    """A Pareto front's table with the FRONT_EXTRA columns hidden until asked for."""
    return replace(front, extra=frozenset(i for i, (label, _, _) in enumerate(front.headers) if label in FRONT_EXTRA))


LEADERBOARD = (  # (key, label, text aligned)
    ("method", "method", True),
    ("model", "model", True),
    ("settings", "settings", True),
    ("protocol", "protocol", True),
    ("picked", "picked", True),
    ("mean_score", "mean ± 95% CI (n)", False),
    ("vs_best", "vs best", True),
    ("crossed", "± seeds & examples", False),
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
# Behind the leaderboard's "all columns" toggle, so that its default columns fit a 1400-pixel
# window: the best seed (for reference only, see LEADERBOARD_DOCS), and the costs that follow
# from ones shown (trainable % from trainable parameters) or that few readers rank by (FLOPs per
# sample, the profiler's adapter share). A run's page lists all of them too.
LEADERBOARD_EXTRA = ("crossed", "best_score", "trainable_pct", "gflops", "adapter_overhead_pct")
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
    "protocol": "tuned: finals of `harness tune`, whose hyperparameters were picked on a selection split held out "
    "from the training data; defaults: hyperparameters not selected on held-out data (the method's defaults or "
    "as given)",
    "picked": "what tuning searched, at the values it picked on the selection split (empty for untuned lines)",
    "vs_best": "best: the best mean (the lowest where lower is better); n.s.: not significantly different from it (paired test on the same examples "
    "and seeds, Holm-adjusted over the lines tested); blank: significantly different, or not tested (hover for "
    "the p-value or the reason)",
    "mean_score": "mean score over the line's seeds with a 95% Student t confidence interval (n seeds); lines are "
    "ranked by it, best first. Seed noise only: the evaluation set's own sampling noise is in '± seeds & examples'",
    "crossed": "half-width of the 95% interval of the line's mean that counts the evaluation set's own sampling "
    "beside the seeds' spread (seeds crossed with examples, from the per-example predictions)",
    "best_score": "the best seed's score, for reference only: a best over seeds on the evaluation split "
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


def _median(runs: list[dict], column: str) -> float | None:
    values = [r.get(column) for r in runs if r.get(column) is not None]
    return float(np.median(values)) if values else None


def _line_values(runs: list[dict], ci: MeanCI | None, settings: str, higher_is_better: bool = True) -> dict:
    """The leaderboard's values for one configuration: the seed mean, the best seed (the highest
    score, or the lowest where lower is better), and the median of each cost over its runs."""
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
        "protocol": None,
        "picked": None,
        "vs_best": None,
        "crossed": None,
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
        "best_score": (max if higher_is_better else min)(scores) if scores else None,
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
            cells.append(text_cell(value, best["_page"] if best["_paged"] else None))
        elif key == "mean_score":
            title = (
                "" if value is None or value.low is None else f"95% CI [{value.low:.4f}, {value.high:.4f}], n={value.n}"
            )
            cells.append(
                Cell(MISSING if value is None else str(value), "" if value is None else value.mean, title=title)
            )
        elif key == "n_runs":
            # A link per run (a few at most), labelled by its seed; the rest are counted.
            links = tuple(
                (
                    f"s{r['seed']}",
                    r["_page"],
                    f"{r['method']} seed {r['seed']}, score {fmt(r['score'], 'score')}, job {r['job_hash']}",
                )
                for r in runs
                if r["_paged"]
            )[:RUN_LINKS]
            cells.append(Cell(str(value), value, False, links, f"{value} run(s)", more=value - len(links)))
        elif key in ("protocol", "picked", "vs_best"):
            cells.append(value if value is not None else Cell("", "", True, short=True))
        elif key == "crossed":
            cells.append(value if value is not None else Cell(MISSING, "", False, title="no per-example scores"))
        elif key == "compression_kernel" and value == "simulated":
            cells.append(Cell("simulated", value, True, title="simulated kernel: the dense float model ran"))
        elif key in ("model", "settings", "compression_kernel", "device_name"):
            cells.append(text_cell(value))
        else:
            cells.append(number_cell(value, key))
    return cells


# Shown by the protocol and picked columns (and the tuning table), so kept out of the settings text.
TUNING_SETTINGS = frozenset({"tuning_group", "tuned"})


def _differing_settings(groups: list[list[dict]]) -> list[str | None]:
    return grouping.differing(
        [{k: v for k, v in grouping.settings(runs[0]).items() if k not in TUNING_SETTINGS} for runs in groups]
    )


def _config(row: dict) -> dict:
    try:
        config = json.loads(row.get("config") or "{}")
    except (TypeError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def _method_params(config: dict) -> dict[str, Any]:
    """A config's method parameters by name ('r'), by step and name ('lora.r') where a pipeline's
    steps share a name."""
    steps = [s for s in config.get("method_params") or [] if isinstance(s, dict)]
    names = [n for s in steps for n in (s.get("params") or {})]
    return {
        (name if names.count(name) == 1 else f"{step.get('method')}.{name}"): value
        for step in steps
        for name, value in (step.get("params") or {}).items()
    }


def _searched(config: dict) -> dict[str, Any]:
    return {"lr": config.get("lr"), **_method_params(config)}


def searched_names(trials: list[dict]) -> list[str]:
    """What a tuning group searched: the learning rate, and any method parameter that differs between its trials."""
    values = [_searched(_config(t)) for t in trials]
    names = {k for v in values for k in v} - {"lr"}
    varying = sorted(k for k in names if len({grouping.setting_text(v.get(k)) for v in values}) > 1)
    return ["lr", *varying]


def values_text(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={grouping.setting_text(v)}" for k, v in values.items())


def tuned_values(final: dict, trials: list[dict]) -> dict[str, Any] | None:
    """A final's tuned hyperparameters: its `tuned` column, else its config's, else (rows written
    before either) its config's values of what its group's trials searched; None: not known."""
    text = plain(final.get("tuned"))
    if isinstance(text, str):
        try:
            tuned = json.loads(text)
        except ValueError:
            tuned = None
        if isinstance(tuned, dict):
            return tuned
    config = _config(final)
    if isinstance(config.get("tuned"), dict):
        return config["tuned"]
    if not trials:
        return None
    mine = _searched(config)
    return {k: mine.get(k) for k in searched_names(trials)}


def _same_configuration(trial: dict, final: dict) -> bool:
    """Whether a final ran the trial's hyperparameters: the same learning rate and method parameters."""
    a, b = _config(trial), _config(final)
    lr_a, lr_b = a.get("lr"), b.get("lr")
    same_lr = lr_a == lr_b or (
        isinstance(lr_a, (int, float)) and isinstance(lr_b, (int, float)) and math.isclose(lr_a, lr_b, rel_tol=1e-9)
    )
    return same_lr and json.dumps(a.get("method_params"), sort_keys=True) == json.dumps(
        b.get("method_params"), sort_keys=True
    )


def _by_group(rows: list[dict]) -> dict[str | None, list[dict]]:
    groups: dict[str | None, list[dict]] = {}
    for row in rows:
        groups.setdefault(versus.tuning_group(row), []).append(row)
    return groups


def _protocol_cells(runs: list[dict], trials: list[dict]) -> tuple[Cell, Cell]:
    final = runs[0]
    if versus.tuning_role(final) != "final":
        doc = "defaults: hyperparameters not selected on held-out data (the method's defaults or as given)"
        return Cell("defaults", "defaults", True, title=doc, short=True), Cell("", "", True, short=True)
    group = versus.tuning_group(final)
    split = plain(final.get("selection_split")) or "the selection split"
    title = f"tuning group {group}: picked on {split}, then run on {len(runs)} seed(s) scored on the reported split"
    tuned = tuned_values(final, trials)
    if tuned is None:
        why = f"the rows of group {group} record no tuned values and none of its trials is in the store"
        picked = Cell(MISSING, "", True, title=why, short=True)
    else:
        text = values_text(tuned)
        picked = Cell(text, text, True, title=f"picked on {split}", short=True)
    return Cell("tuned", "tuned", True, title=title, short=True), picked


def _significance(
    lines: list, labels: list[str], results_dir, confidence: float = 0.95, higher_is_better: bool = True
) -> tuple[list, str]:
    """Each line's mark against the first (the best mean), and a note when no line could be tested."""
    if results_dir is None or len(lines) < 2 or lines[0][0]["mean_score"] is None:
        return [None] * len(lines), ""
    configs = [versus.configuration(runs[0]["_group"], runs, label) for (_, _, runs), label in zip(lines, labels)]
    marks = versus.against_best(results_dir, configs, confidence, higher_is_better)
    if all(m.p_value is None for m in marks[1:]):
        # Nothing was tested: one note instead of a column of blanks, with the reason.
        return [None] * len(lines), f"No line was tested against the best line ({marks[1].title})."
    cells = [
        Cell(m.text, -1.0 if i == 0 else ("" if m.holm_p is None else m.holm_p), True, title=m.title, short=True)
        for i, m in enumerate(marks)
    ]
    return cells, ""


def _crossed_cell(results_dir, runs: list[dict]) -> Cell | None:
    """The half-width of the line's interval counting the evaluation set's sampling beside the seeds'
    spread (None when its runs have no per-example scores to count it from)."""
    interval, _ = versus.crossed_interval(results_dir, [r for r in runs if r["score"] is not None])
    if interval is None:
        return None
    title = (
        f"{interval.confidence:.0%} interval [{interval.low:.4f}, {interval.high:.4f}] over "
        f"{interval.variance.n_seeds} seed(s) x {interval.variance.n_examples} examples"
    )
    return Cell(f"± {interval.half_width:.4f}", interval.half_width, False, title=title)


def leaderboard_table(
    ok: pd.DataFrame, records: list[dict], results_dir: str | os.PathLike | None = None, trials: list[dict] = ()
) -> Table:
    """One line per configuration (every setting the same but the seed, on one device), ranked
    by its seed mean (best first: highest, or lowest where the task's score is lower-is-better): the
    best seed is shown, but a best over seeds on the evaluation split would reward the line with the
    most draws. Lines of `harness tune` finals say so and what was picked (`trials`: the task's
    trials, for rows that do not record it); with the store's folder, each line is marked against
    the best line by the paired test (`versus.against_best`)."""
    higher = score_direction([r.get("higher_is_better") for r in records], _where(records))
    sign = 1.0 if higher else -1.0  # goodness = sign * score
    groups, bests = [], []
    for idx in ok.groupby("_group", sort=False).indices.values():
        runs = sorted((records[i] for i in idx), key=lambda r: (r["seed"] is None, r["seed"]))
        groups.append(runs)
        bests.append(max(runs, key=lambda r: sign * r["score"] if r["score"] is not None else -math.inf))
    lines = []
    for runs, best, settings in zip(groups, bests, _differing_settings(groups)):
        scores = [r["score"] for r in runs if r["score"] is not None]
        lines.append((_line_values(runs, mean_ci(scores) if scores else None, settings, higher), best, runs))
    lines.sort(
        key=lambda line: -math.inf if line[0]["mean_score"] is None else sign * line[0]["mean_score"].mean,
        reverse=True,
    )
    if any(versus.tuning_role(runs[0]) == "final" for _, _, runs in lines):
        trials_of = _by_group(list(trials))
        for values, _, runs in lines:
            values["protocol"], values["picked"] = _protocol_cells(
                runs, trials_of.get(versus.tuning_group(runs[0]), [])
            )
            if values["picked"].text == "":
                values["picked"] = None
    for values, _, runs in lines:
        values["crossed"] = _crossed_cell(results_dir, runs) if results_dir is not None else None
    labels = [v["method"] + (f" {v['settings']}" if v["settings"] else "") for v, _, _ in lines]
    marks, note = _significance(lines, labels, results_dir, higher_is_better=higher)
    for (values, _, _), mark in zip(lines, marks):
        values["vs_best"] = mark
    # A column no line has a value in (latency before anything measured it, TTFT on GLUE) is left out.
    keys = [k for k, _, _ in LEADERBOARD if k in ("method", "mean_score") or any(v[k] is not None for v, _, _ in lines)]
    headers = tuple(
        (score_label(label, higher) if k == "mean_score" else label, text, LEADERBOARD_DOCS.get(k, ""))
        for k, label, text in LEADERBOARD
        if k in keys
    )
    rows = [("best" if i == 0 else "", _line_cells(v, best, runs, keys)) for i, (v, best, runs) in enumerate(lines)]
    return Table(headers, rows, frozenset(i for i, k in enumerate(keys) if k in LEADERBOARD_EXTRA), note)


TUNING_DOCS = {
    "method": "the method tuned",
    "group": "the tuning group: one method's trials and finals (harness tune)",
    "trials": "each trial's searched values and its score on the selection split (held out from the training "
    "data, never the reported split); the picked one is marked",
    "picked": "the trial the group picked, whose configuration the finals ran on the reported split",
    "finals": "seeds of the picked configuration scored on the reported split (they are the leaderboard's line)",
    "selection split": "the held-out split the trials are scored on",
}


def _where(rows: list[dict]) -> str:
    return f"{rows[0].get('suite')}/{rows[0].get('task')}" if rows else ""


def tuning_table(trials: list[dict], finals: list[dict]) -> Table | None:
    """Per tuning group of a task: its trials' searched values and selection scores, the picked
    one marked (the trial whose learning rate and method parameters its finals ran); a group's
    trials cell sorts by its best selection score."""
    if not trials:
        return None
    best = max if score_direction([t.get("higher_is_better") for t in trials], _where(trials)) else min
    finals_of = _by_group([r for r in finals if versus.tuning_role(r) == "final"])
    headers = tuple((label, label != "finals", TUNING_DOCS[label]) for label in TUNING_DOCS)
    rows = []
    for group, members in sorted(_by_group(trials).items(), key=lambda item: str(item[0])):
        names = searched_names(members)
        mine = finals_of.get(group, [])
        picked = [t for t in members if mine and _same_configuration(t, mine[0])]
        members = sorted(members, key=lambda t: (_config(t).get("lr") or 0.0, values_text(_searched(_config(t)))))
        links = []
        for trial in members:
            values = _searched(_config(trial))
            label = f"{values_text({k: values.get(k) for k in names})}: {fmt(trial['score'], 'score')}"
            label += " (picked)" if trial in picked else ""
            tip = f"{trial['method']} seed {trial['seed']}, selection score {fmt(trial['score'], 'score')}"
            links.append((label, trial["_page"] if trial["_paged"] else "", tip))
        scores = [t["score"] for t in members if t["score"] is not None]
        if picked:
            values = _searched(_config(picked[0]))
            picked_cell = text_cell(values_text({k: values.get(k) for k in names}))
        else:
            why = "no final of this group is in the store yet" if not mine else "no trial ran the finals' values"
            picked_cell = Cell(MISSING, "", True, title=why)
        method = (mine or members)[0]["method"]
        split = plain(members[0].get("selection_split"))
        if split is None and _config(members[0]).get("selection_samples") is not None:
            split = f"train: {_config(members[0])['selection_samples']} held out"
        rows.append(
            (
                "",
                [
                    text_cell(method),
                    text_cell(MISSING if group is None else group),
                    Cell(
                        links[0][0] if links else "",
                        best(scores) if scores else "",
                        True,
                        tuple(links),
                        wrap=True,
                        separator=" · ",
                    ),
                    picked_cell,
                    Cell(str(len(mine)), len(mine), title=", ".join(f"seed {r['seed']}" for r in mine)),
                    Cell(MISSING if split is None else str(split), str(split or ""), True, wrap=True),
                ],
            )
        )
    return Table(headers, rows)


def failed_table(records: list[dict]) -> Table:
    headers = (("method", True, ""), ("seed", False, ""), ("model", True, ""), ("job", True, ""), ("error", True, ""))
    rows = [
        (
            "failed",
            [
                text_cell(r["method"]),
                number_cell(r["seed"], "seed"),
                text_cell(r["model"]),
                text_cell(r["job_hash"], r["_page"] if r["_paged"] else None),
                Cell(str(r["error"] or MISSING), str(r["error"] or ""), True, wrap=True),
            ],
        )
        for r in records
    ]
    return Table(headers, rows)
