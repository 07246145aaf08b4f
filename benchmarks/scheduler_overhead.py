"""Does `harness sweep` keep its slots busy, and what does each job cost beyond its work?

Runs N identical short jobs (`--method none`, a small eval subset) through the local
executor with S slots and compares the makespan with the ideal: the sum of the jobs'
wall times over S (a scheduler that never leaves a slot idle reaches it, give or take
the last job). Target: makespan within 5% of ideal plus start-up (resolving the jobs).
Also prints the harness's own per-job overhead: starting a worker process and importing
the harness (paid by every job, as isolation's price) and writing the result row.
Appends a row to benchmarks/results/scheduler_overhead.parquet.

    python benchmarks/scheduler_overhead.py --model minilm-l6 --data-dir ../shared/data --jobs 8 --slots 2
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import pyarrow.parquet as pq

from harness.core.environment import describe
from harness.engine.resolve import resolve
from harness.execution.local import device_slots, run_local
from harness.execution.plan import SweepJob
from harness.results.store import append_records
from harness.spec.run import RunSpec
from harness.spec.sweep_file import Resources


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--suite", default="glue")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/scheduler_overhead.parquet")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="harness-sched-") as results:
        start = time.perf_counter()
        jobs = []
        for seed in range(args.jobs):
            spec = RunSpec(
                suite=args.suite,
                task=args.task,
                method="none",
                model=args.model,
                data_dir=args.data_dir,
                max_eval_samples=args.eval_samples,
                latency_repeats=2,
                seed=seed,
                results_dir=results,
            )
            jobs.append(SweepJob(spec, resolve(spec)[0], Resources()))
        startup = time.perf_counter() - start

        start = time.perf_counter()
        outcomes = run_local(jobs, device_slots(None, 1, args.slots))
        makespan = time.perf_counter() - start
        assert all(o.status == "ok" for o in outcomes), [o.error for o in outcomes if o.status != "ok"]
        job_seconds = [o.seconds for o in outcomes]
        ideal = sum(job_seconds) / args.slots

        imports = median_seconds(
            lambda: subprocess.run([sys.executable, "-c", "import harness.engine.job"], check=True), 3
        )
        from harness.results.store import result_files, write_row

        row = pq.read_table(result_files(results)[0]).to_pylist()[0]
        with tempfile.TemporaryDirectory() as scratch:
            store_write = median_seconds(lambda: write_row(row, scratch), 20)

    ratio = makespan / ideal
    within = makespan <= 1.05 * ideal + startup
    print(
        f"{args.jobs} jobs on {args.slots} slots: makespan {makespan:.1f}s, ideal (sum of job times / slots) "
        f"{ideal:.1f}s, ratio {ratio:.3f}; start-up {startup:.1f}s -> {'within' if within else 'NOT within'} 5% + start-up"
    )
    print(
        f"per job: {statistics.mean(job_seconds):.1f}s wall on average, of which the harness's own overhead is "
        f"process start + imports {imports:.2f}s and store write {store_write * 1e3:.1f}ms"
    )

    import torch

    env = describe(torch.device("cpu"))
    record = {
        "created_at": datetime.now(timezone.utc),
        "jobs": args.jobs,
        "slots": args.slots,
        "makespan_s": makespan,
        "ideal_s": ideal,
        "ratio": ratio,
        "startup_s": startup,
        "mean_job_s": statistics.mean(job_seconds),
        "process_start_imports_s": imports,
        "store_write_ms": store_write * 1e3,
        "within_target": within,
        "device_name": env.get("device_name"),
        "git_commit": env.get("git_commit"),
    }
    print(f"appended to {append_records(args.out, [record])}")


if __name__ == "__main__":
    main()
