"""What the report's pages show of a result row: the cost axes of its Pareto plots, the columns
it derives or reads from newer stores only, each column's doc, and the pages' file names."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.results import grouping
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


def slug(text) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text))


def run_page(job_hash, run_id) -> str:
    return f"run-{slug(job_hash)}-{slug(run_id)}.html"


def pareto_page(suite, task) -> str:
    return f"pareto-{slug(suite)}-{slug(task)}.html"
