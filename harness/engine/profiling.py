"""Kernel profiles of a run: a few training steps and inference batches under torch.profiler.

The training profile times forward and backward on the training split's first batch
(the optimizer's update is left out; buffers such as batch-norm statistics, modes, the
random state and gradients are restored by harness/measure/passes.py, so the model is not changed
by being measured), on the model as trained, with its adapters. The inference
profile times forward passes of the latency batch on the final model. Both tables go to
`<results>/_kernels/<job_hash>-<run_id>.parquet`; the rows carry the adapter-overhead shares.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch

from harness.core.atomic import atomic_write
from harness.measure.kernels import AdapterScope, KernelProfile, profile_steps
from harness.measure.passes import autocast, loss_backward, to_device, unchanged, untraced_backward
from harness.results.store import kernel_table_path


@contextlib.contextmanager
def _native_stderr_silenced():
    """torch's profiler backend (kineto) writes a line to file descriptor 2 at every start and
    stop, below Python's reach; a run's output should not carry them. Exceptions still
    propagate and are printed after the descriptor is restored."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _steps(device: torch.device) -> tuple[int, int]:
    return (2, 3) if device.type == "cuda" else (1, 2)  # (warm-up, timed steps): CPU steps are slow


def profile_training(
    model: torch.nn.Module, batch: dict, device: torch.device, precision: str, adapters: list[AdapterScope]
) -> KernelProfile:
    """`adapters`: the pipeline's adapter scopes in `model` (`Pipeline.adapter_scopes`)."""
    warmup, steps = _steps(device)
    batch = to_device(batch, device)
    with untraced_backward(model, device), _native_stderr_silenced():
        model.train()
        return profile_steps(
            lambda: loss_backward(model, batch, device, precision),
            device,
            warmup=warmup,
            steps=steps,
            adapters=adapters,
        )


def profile_inference(
    model: torch.nn.Module, batch: dict, device: torch.device, precision: str, adapters: list[AdapterScope]
) -> KernelProfile:
    warmup, steps = _steps(device)
    batch = {k: v for k, v in to_device(batch, device).items() if k != "labels"}

    @torch.inference_mode()
    def forward():
        with autocast(device, precision):
            model(**batch)

    with unchanged(model), _native_stderr_silenced():
        model.eval()
        return profile_steps(forward, device, warmup=warmup, steps=steps, adapters=adapters)


def write_kernel_tables(results_dir: str, job_hash: str, run_id: str, profiles: dict[str, KernelProfile]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([p.to_table(job_hash, phase) for phase, p in profiles.items()])
    table = table.append_column("run_id", pa.array([run_id] * table.num_rows, pa.string()))
    path = kernel_table_path(results_dir, job_hash, run_id)
    with atomic_write(path) as f:
        pq.write_table(table, f)
    return path
