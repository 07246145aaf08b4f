"""How long do reading a store and `harness report` take on a large store laid out as it really is?

Writes N synthetic result rows (default 10,000: 7 tasks in 4 suites, 30 methods, 2 models,
5 seeds, 5 settings per seed, 1% failed, two devices, a kernel profile for some jobs) the
way runs write them: one Parquet file per run under <results>/<suite>/<task>/, and kernel
tables under <results>/_kernels/. Then times, on that store: the first read (no index yet:
every file is opened), a warm read (the index serves unchanged files), sweep planning
(`job_status`, four columns), and `write_report`. Targets: a warm read under 3 s, the
report under 5 s. Appends a row to benchmarks/results/report_scale.parquet.

    python benchmarks/report_scale.py --rows 10000 [--out /tmp/report-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from harness.core.environment import describe
from harness.results.store import append_records, job_status, read_store, write_row
from harness.site.build import write_report
from harness.spec.schema import COLUMNS, SCHEMA_VERSION

TASKS = (
    ("glue", "sst2", "accuracy"),
    ("glue", "mrpc", "f1"),
    ("glue", "cola", "matthews_correlation"),
    ("glue", "mnli", "accuracy"),
    ("cifar", "cifar10", "accuracy"),
    ("imagenet", "imagenette", "accuracy"),
    ("gsm8k", "gsm8k", "exact_match_flexible"),
)
METHODS = (
    "full",
    "bitfit",
    "ia3",
    "vera",
    "loha",
    "lokr",
    "adalora",
    "prefix",
    "prompt",
    "ln_tuning",
    *(f"lora:r={r}" for r in (2, 4, 8, 16, 32)),
    *(f"dora:r={r}" for r in (4, 8, 16)),
    "int8",
    "int4",
    "nf4",
    "svd:rank=8",
    "svd:rank=32",
    "magnitude:sparsity=0.5",
    "magnitude:sparsity=0.8",
    "wanda",
    "sparsegpt",
    "tome",
    "galore",
    "lisa",
)
MODELS = ("model-small", "model-base")
DEVICES = (
    ("cpu", "Intel(R) Xeon(R) Processor", "cpu_peak_rss_reset"),
    ("cuda:0", "NVIDIA H100 80GB HBM3", "cuda_max_allocated"),
)
SEEDS, SETTINGS = 5, 5


def synthetic_row(i: int, task: tuple, method: str, model: str, seed: int, setting: int, rng) -> dict:
    """One plausible row: costs scale with the method's size and the model, scores vary by seed."""
    suite, name, metric = task
    m = METHODS.index(method)
    big = MODELS.index(model) + 1
    device, device_name, memory_kind = DEVICES[setting % 2]
    trains = not method.startswith(("int", "nf4", "svd", "magnitude", "wanda", "sparsegpt", "tome"))
    trainable = int(10 ** (3 + m % 7) * big) if trains else 0
    failed = i % 100 == 99
    score = float(np.clip(0.5 + 0.012 * m + 0.05 * big + rng.normal(0, 0.02), 0, 1))
    generation = suite == "gsm8k"
    config = {
        "suite": suite,
        "task": name,
        "method": method,
        "model": model,
        "seed": seed,
        "learning_rate": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2][setting],
        "batch_size": 32,
        "max_steps": 1000,
        "eval": {"split": "validation", "max_samples": None},
        "data_dir": "/data",
        "setting": setting,
    }
    row = {c.name: None for c in COLUMNS}
    row.update(
        schema_version=SCHEMA_VERSION,
        job_hash=f"{i:016x}",
        run_id=f"r{i:011x}",
        created_at=datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=i),
        suite=suite,
        task=name,
        method=method,
        method_params=json.dumps([{"method": method.split(":")[0], "params": {}}]),
        model=model,
        model_hub_id=f"org/{model}",
        seed=seed,
        config=json.dumps(config),
        status="failed" if failed else "ok",
        error="RuntimeError: CUDA out of memory" if failed else None,
        metric=metric,
        score=None if failed else score,
        metrics=json.dumps({metric: score}),
        eval_split="validation",
        eval_samples=872,
        eval_seconds=float(rng.uniform(2, 20)),
        train_samples=10_000,
        train_steps=1000 if trains else 0,
        train_seconds=float(rng.uniform(30, 600) * big) if trains else 0.0,
        trainable_params=trainable,
        total_params=int(1e8 * big),
        model_bytes=int(4e8 * big),
        compressed_model_bytes=int(1e8 * big) if not trains else None,
        compression_kernel=("simulated" if method == "int4" else "real") if not trains else None,
        flops_per_sample=float(2e10 * big * rng.uniform(0.5, 1)),
        peak_memory_bytes=int(rng.uniform(1, 20) * 2**30 * big),
        peak_memory_kind=memory_kind,
        latency_bs1_p50_ms=float(rng.uniform(2, 50) * big),
        latency_batch_p50_ms=float(rng.uniform(20, 500) * big),
        device=device,
        device_name=device_name,
        pipeline_costs=json.dumps(
            [
                {
                    "step": method,
                    "phase": "before training",
                    "compresses": not trains,
                    "seconds": 0.1,
                    "trainable_params": trainable,
                    "total_params": int(1e8 * big),
                    "model_bytes": int(4e8 * big),
                }
            ]
        ),
        ttft_bs1_p50_ms=float(rng.uniform(20, 200)) if generation else None,
        generation_batch_tokens_per_s=float(rng.uniform(50, 2000)) if generation else None,
        harness_version="0.1.0",
        torch_version="2.13.0",
    )
    return row


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    combos = [
        (t, m, mo, s, st)
        for t in TASKS
        for m in METHODS
        for mo in MODELS
        for st in range(SETTINGS)
        for s in range(SEEDS)
    ]
    return [synthetic_row(i, *combos[i % len(combos)], rng) for i in range(n)]


def write_kernel_tables(results: Path, runs: list[tuple[str, str]]) -> None:
    """<results>/_kernels/<job_hash>-<run_id>.parquet as the kernel profiler writes them."""
    folder = results / "_kernels"
    folder.mkdir(parents=True, exist_ok=True)
    categories = ("matmul", "attention", "normalisation", "elementwise", "memory copy", "adapter op", "other")
    for job, run in runs:
        rows = []
        for phase in ("train", "inference"):
            totals = sorted(np.random.default_rng(len(rows)).uniform(1, 1e4, 40), reverse=True)
            total = sum(totals)
            rows += [
                {
                    "job_hash": job,
                    "phase": phase,
                    "rank": k + 1,
                    "name": f"aten::op_{k}",
                    "category": categories[k % 7],
                    "calls": 10 + k,
                    "total_us": t,
                    "mean_us": t / (10 + k),
                    "share": t / total,
                    "run_id": run,
                }
                for k, t in enumerate(totals)
            ]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{job}-{run}.parquet")


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--kernel-profiles", type=int, default=100, help="jobs that get a kernel table")
    parser.add_argument("--out", type=Path, default=None, help="keep the site here (default: a temporary folder)")
    parser.add_argument("--all-run-pages", action="store_true", help="a page for every run (no per-task limit)")
    parser.add_argument("--record", default="benchmarks/results/report_scale.parquet")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="harness-report-scale-") as tmp:
        results = Path(tmp) / "results"
        rows = synthetic_rows(args.rows)
        _, write_s, _ = timed(lambda: [write_row(r, results) for r in rows])  # one file per run, atomically
        write_kernel_tables(results, [(r["job_hash"], r["run_id"]) for r in rows[: args.kernel_profiles]])
        cold, cold_s, cold_cpu = timed(lambda: read_store(results))
        warm, warm_s, warm_cpu = timed(lambda: read_store(results))
        assert len(cold.frame) == len(warm.frame) == args.rows and not warm.skipped
        status, plan_s, _ = timed(lambda: job_status(results))
        assert len(status) == args.rows
        out = args.out or Path(tmp) / "site"
        limit = {"run_pages_per_task": None} if args.all_run_pages else {}
        (_, n), report_s, report_cpu = timed(lambda: write_report(results, out, **limit))
        pages = sorted(out.glob("*.html"))
        size = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    load = os.getloadavg()[0]
    # CPU time too: on a shared machine the wall time says as much about the neighbours.
    print(f"{args.rows} runs, one file each (written in {write_s:.1f} s)")
    print(f"first read (no index): {cold_s:.2f} s wall, {cold_cpu:.2f} s CPU")
    print(f"warm read (index):     {warm_s:.2f} s wall, {warm_cpu:.2f} s CPU (target < 3 s)")
    print(f"sweep planning:        {plan_s:.2f} s wall")
    print(
        f"report: {n} runs -> {len(pages)} pages ({size:,.0f} MiB) in {report_s:.2f} s wall, {report_cpu:.2f} s CPU "
        f"(target < 5 s; load average {load:.1f})"
    )
    import torch

    env = describe(torch.device("cpu"))
    record = {
        "created_at": datetime.now(timezone.utc),
        "rows": args.rows,
        "files": args.rows,
        "write_s": write_s,
        "first_read_s": cold_s,
        "first_read_cpu_s": cold_cpu,
        "warm_read_s": warm_s,
        "warm_read_cpu_s": warm_cpu,
        "plan_s": plan_s,
        "report_s": report_s,
        "report_cpu_s": report_cpu,
        "pages": len(pages),
        "load_average": load,
        "within_target": warm_s < 3 and report_s < 5,
        "cpu_model": env.get("cpu_model"),
        "cpu_threads": env.get("cpu_threads"),
        "git_commit": env.get("git_commit"),
    }
    print(f"appended to {append_records(args.record, [record])}")


if __name__ == "__main__":
    main()
