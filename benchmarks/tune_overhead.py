"""What does the fair-comparison protocol cost beyond its trials? Target: under 2% of their time.

Takes a sweep file with a `tune:` block and the store its `harness tune` run filled, and times the
protocol's own work again, each part the median of a few repeats: planning (every group's search
points and every trial resolved and checked; the first, cold run counts), selection (reading the trials' scores, picking,
planning the finals, writing the records) and statistics (every method against a baseline with the
paired test, as `harness compare --versus` and the report's marks do). The jobs' time is what their
rows recorded, training plus evaluation: less than each job's wall time (its process start, model
load and latency measurement are left out), so the share printed is an upper bound. Appends a row
to benchmarks/results/tune_overhead.parquet.

    harness tune configs/tune-sst2.yaml
    python benchmarks/tune_overhead.py configs/tune-sst2.yaml --baseline lora
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

from scheduler_overhead import median_seconds  # run from benchmarks/'s own folder on sys.path


def main() -> None:
    from harness.core.environment import describe
    from harness.execution.tune import pick, plan_finals, plan_groups, trial_scores
    from harness.results.store import append_records, latest_per_job, read_results
    from harness.results.versus import versus_store
    from harness.spec.sweep_file import load_sweep

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="the sweep file with a tune: block, already run with `harness tune`")
    parser.add_argument("--results", default=None, help="its store, if not the file's `results`")
    parser.add_argument("--baseline", default="lora", help="the method the statistics compare the others with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/tune_overhead.parquet")
    args = parser.parse_args()

    loaded = load_sweep(args.file)
    block = loaded.config.tune
    start = time.perf_counter()
    groups = plan_groups(loaded, args.results)  # cold: the first resolution reads model configs and digests
    planning_cold = time.perf_counter() - start
    store = groups[0].results_dir

    def selection() -> None:
        scores, _, _ = trial_scores(groups)
        for group in groups:
            group.picked = pick(group, scores)
            if group.picked is None:
                raise SystemExit(f"{group.label}: its trials are not all done; run `harness tune {args.file}` first")
            group.finals = plan_finals(loaded, group, block, args.results)

    planning = max(planning_cold, median_seconds(lambda: plan_groups(loaded, args.results), args.repeats))
    selecting = median_seconds(selection, args.repeats)
    stats = median_seconds(lambda: versus_store(store, args.baseline), args.repeats)

    wanted = {t.job.job_hash for g in groups for t in g.trials} | {f.job_hash for g in groups for f in g.finals}
    rows = latest_per_job(read_results(store))
    rows = rows[rows["job_hash"].isin(wanted) & (rows["status"] == "ok")]
    if len(rows) < len(wanted):
        raise SystemExit(f"{len(wanted) - len(rows)} of the protocol's {len(wanted)} jobs have no successful row")
    jobs = float((rows["train_seconds"].fillna(0) + rows["eval_seconds"].fillna(0)).sum())
    own = planning + selecting + stats
    share = own / jobs
    print(
        f"{len(groups)} groups, {len(wanted)} jobs: planning {planning:.2f}s, selection {selecting:.2f}s, "
        f"statistics {stats:.2f}s; the jobs' training and evaluation {jobs:.0f}s -> protocol "
        f"{100 * share:.2f}% ({'within' if share < 0.02 else 'NOT within'} the 2% target)"
    )
    import torch

    env = describe(torch.device("cpu"))
    record = {
        "created_at": datetime.now(timezone.utc),
        "file": args.file,
        "groups": len(groups),
        "jobs": len(wanted),
        "planning_s": planning,
        "selection_s": selecting,
        "statistics_s": stats,
        "jobs_train_eval_s": jobs,
        "protocol_share": share,
        "within_target": share < 0.02,
        "device_name": env.get("device_name"),
        "git_commit": env.get("git_commit"),
    }
    print(f"appended to {append_records(args.out, [record])}")


if __name__ == "__main__":
    main()
