"""One job, end to end: resolve -> load -> apply method -> train -> evaluate -> measure -> store.

Bad input raises `HarnessError` before anything is written. Once the job starts, any
other exception (a crash, an out-of-memory error) becomes a `failed` row with the
error and its traceback, so one broken run is one row, not a lost sweep.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from harness.core import environment
from harness.core.devices import fp32_uses_tf32, mfu
from harness.core.errors import HarnessError, first_line
from harness.data.resolve import gguf_origin, model_load_error
from harness.engine.loop import NO_TRAINING_DATA, check_precision, first_batch, sample_batches, total_steps, train
from harness.engine.profiling import profile_inference, profile_training, write_kernel_tables
from harness.engine.resolve import resolve
from harness.evaluation.base import choose, current
from harness.measure.size import (
    count_parameters,
    model_bytes,
    model_memory_bytes,
    stored_parameter_count,
    trainable_bytes,
    weight_sparsity,
)
from harness.methods.base import Compression, MethodContext, head_is_fresh
from harness.results.predictions import write_predictions
from harness.results.store import write_row
from harness.spec.run import ResolvedRun, RunSpec
from harness.spec.schema import SCHEMA_VERSION
from harness.suites.base import SUITES


@dataclass
class JobResult:
    row: dict[str, Any]
    path: Path

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HarnessError(f"--device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"--device {name!r} asked for CUDA, but torch sees no GPU; use --device cpu")
    return device


def run_job(spec: RunSpec, show_progress: bool = True) -> JobResult:
    run, suite, task, pipeline, sources = resolve(spec)
    device = pick_device(run.device)
    check_precision(run.precision, device)  # before any model is loaded
    backend = eval_backend(run, device)  # likewise: the backend resolve chose can run on this device
    row = _identity_row(run, device)
    try:
        with deterministic_algorithms(run.deterministic):
            columns, examples = _execute(
                run, suite, task, pipeline, sources, device, show_progress, row["run_id"], backend
            )
        row.update(columns)
        # Once the run's row is known and before it is written: a run that fails writes none.
        write_predictions(run.results_dir, run.job_hash, row["run_id"], examples)
        row["status"] = "ok"
    except (HarnessError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 - every failure of a started run is recorded
        row.update(status="failed", error=_describe_error(exc), traceback=traceback.format_exc())
    row["created_at"] = datetime.now(timezone.utc)
    return JobResult(row, write_row(row, run.results_dir))


@contextmanager
def deterministic_algorithms(on: bool):
    """torch's deterministic algorithms for the job, where torch has them (warn_only: an operation
    without one warns rather than fails), as they were before afterwards. cuBLAS is deterministic
    only with a fixed workspace (CUBLAS_WORKSPACE_CONFIG, torch's reproducibility notes), which it
    reads when it starts: set before the job's first CUDA call."""
    if not on:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def record_failure(run: ResolvedRun, error: str, detail: str = "", env: dict[str, Any] | None = None) -> Path:
    """A `failed` row for a job that ended outside `run_job`'s reach (killed, timed out, crashed
    in its process), written by whoever watched it. `env`: the environment the job had (the
    slot's device, named without initialising CUDA in the watcher; harness/execution/isolated.py)."""
    row = _identity_row(run, pick_device(run.device) if env is None else None, env)
    row.update(status="failed", error=error, traceback=detail or None, created_at=datetime.now(timezone.utc))
    return write_row(row, run.results_dir)


def _describe_error(exc: BaseException) -> str:
    text = str(exc).lower()
    if (
        isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError))
        or "out of memory" in text
        or "can't allocate memory" in text
        or "cannot allocate memory" in text
    ):  # ENOMEM's own words (e.g. mmap of a checkpoint under RLIMIT_DATA)
        return f"out of memory: {first_line(exc)}"
    message = first_line(exc)
    return type(exc).__name__ if message == type(exc).__name__ else f"{type(exc).__name__}: {message}"


def _identity_row(run: ResolvedRun, device: torch.device | None, env: dict[str, Any] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "job_hash": run.job_hash,
        "run_id": uuid.uuid4().hex[:12],
        "suite": run.suite,
        "task": run.task,
        "method": run.method,
        "method_params": json.dumps(run.method_params, sort_keys=True),
        "model": run.model,
        "model_hub_id": run.model_hub_id,
        "model_digest": run.model_digest,
        "seed": run.seed,
        "config": run.model_dump_json(),
        "eval_backend": run.eval_backend or current(SUITES.get(run.suite).eval_kind).name,
        "status": "failed",
    }
    env = environment.describe(device) if env is None else env
    row.update({k: v for k, v in env.items() if k != "pid"})
    row.setdefault("concurrent_jobs", concurrent_jobs())
    return row


CONCURRENT_JOBS_ENV = "HARNESS_CONCURRENT_JOBS"


def concurrent_jobs() -> int | None:
    """Jobs sharing this job's device, as the executor that started it says; a job started by
    hand (`harness run`) has it alone; an executor that cannot say sets it empty (null)."""
    value = os.environ.get(CONCURRENT_JOBS_ENV)
    if value is None:
        return 1
    return int(value) if value.strip() else None


def eval_backend(run: ResolvedRun, device: torch.device):
    """The evaluation backend `resolve` chose (None: the suite's own path), checked against the
    device the job got."""
    kind = SUITES.get(run.suite).eval_kind
    return (choose(kind, run.eval_backend, device.type) if run.eval_backend else current(kind))()


def _execute(
    run: ResolvedRun,
    suite,
    task,
    pipeline,
    sources,
    device: torch.device,
    show_progress: bool,
    run_id: str,
    backend=None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The row's result columns, and the per-example prediction records of the evaluation."""
    from transformers import set_seed
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the harness reports what matters; silence "newly initialized" chatter
    logging.getLogger("datasets").setLevel(logging.ERROR)
    # Libraries' deprecation notices are for their developers, not for someone reading a run.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if not show_progress:
        import datasets

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()

    train_ds, selection_ds = suite.split_training(task, suite.load_train(task, sources, run), run)
    if run.evaluate_on == "selection":  # a tuning trial: scored on held-out training data only
        suite.check_split(task, "selection", selection_ds)
        eval_sets = [("selection", "", selection_ds)]
    else:
        eval_sets = suite.load_eval(task, sources, run)

    set_seed(run.seed)
    try:
        model, processor = suite.build_model(run.model_location, task, train_ds)
    except (OSError, ValueError) as exc:  # missing files, no network, not a checkpoint
        raise model_load_error(run.model_ref(), exc) from None
    suite.check_inputs(processor, task, eval_sets, run, model)
    suite.before_method(model, processor, task, eval_sets, run, device, show_progress, backend)
    if run.gradient_checkpointing:
        enable_gradient_checkpointing(model)

    if suite.prepares_on_use:
        train_data = PreparedOnUse(lambda: suite.prepare_train(train_ds, processor, task, run), len(train_ds))
    else:
        train_data = suite.prepare_train(train_ds, processor, task, run)
    steps = total_steps(
        len(train_ds),
        run.batch_size,
        run.epochs,
        run.max_steps,
        run.gradient_accumulation_steps,
        run.max_train_tokens,
        mean_tokens(train_data) if run.max_train_tokens else None,
    )
    head = suite.head_modules(model)
    ctx = MethodContext(
        task_type=suite.task_type,
        head_modules=head,
        dense_modules=suite.dense_modules(model),
        total_steps=steps,
        lr=run.lr,
        head_lr=run.head_lr,
        weight_decay=run.weight_decay,
        seed=run.seed,
        gradient_checkpointing=run.gradient_checkpointing,
        fresh_head=head_is_fresh(model, head),
        sample_batches=lambda n: sample_batches(train_data, run.batch_size, n, run.seed),
    )
    # On the job's device before the steps apply: calibration (Wanda, GPTQ) runs where training does.
    model = pipeline.apply(model.to(device), ctx).to(device)
    trainable, total = count_parameters(model)
    if trainable and len(train_ds) == 0:
        raise HarnessError(NO_TRAINING_DATA.format(what="trains"))

    stats = train(
        model,
        train_data,
        pipeline,
        ctx,
        batch_size=run.batch_size,
        steps=steps,
        warmup_ratio=run.warmup_ratio,
        max_grad_norm=run.max_grad_norm,
        precision=run.precision,
        device=device,
        seed=run.seed,
        show_progress=show_progress,
        grad_accum=run.gradient_accumulation_steps,
        lr_scheduler=run.lr_scheduler,
        max_tokens=run.max_train_tokens,
    )
    pipeline.record("train", "training", False, stats.seconds, model)
    profiles = {}
    if run.kernel_profile and stats.steps:  # the model as trained, adapters still in place
        profiles["train"] = profile_training(
            model, first_batch(train_data, run.batch_size), device, run.precision, pipeline.adapter_scopes(model)
        )
    model = pipeline.finalize(model).to(device)
    compression = pipeline.compression(model) or Compression()
    final_bytes = model_bytes(model)
    stored_bytes = compression.compressed_bytes if compression.compressed_bytes is not None else final_bytes
    final_params = stored_parameter_count(model)

    evaluation = suite.evaluate(model, processor, task, eval_sets, run, device, show_progress, backend)
    inference = suite.inference_costs(model, processor, evaluation, run, device, backend)
    if run.kernel_profile:
        profiles["inference"] = profile_inference(
            model,
            first_batch(evaluation.data, run.eval_batch_size),
            device,
            run.precision,
            pipeline.adapter_scopes(model),
        )
        write_kernel_tables(run.results_dir, run.job_hash, run_id, profiles)
    columns = {
        "metric": task.primary_metric,
        "score": evaluation.metrics[task.primary_metric],
        "metrics": json.dumps(evaluation.metrics, sort_keys=True),
        "eval_split": ",".join(evaluation.splits),
        "selection_split": suite.selection_split(task, run),
        "tuning_group": run.tuning_group,
        "tuning_role": tuning_role(run),
        "tuned": json.dumps(run.tuned, sort_keys=True) if run.tuned is not None else None,
        "eval_samples": evaluation.samples,
        "eval_seconds": evaluation.seconds,
        "model_origin": gguf_origin(run.model_location),
        "train_data": run.suite_options.get("train_data"),  # a suite option (gsm8k): another training set
        "train_samples": len(train_ds),
        "train_steps": stats.steps,
        "train_seconds": stats.seconds,
        "train_samples_per_s": stats.samples / stats.seconds if stats.seconds else None,
        "train_tokens_per_s": stats.tokens / stats.seconds if stats.seconds else None,
        "train_tokens": stats.tokens,
        "final_train_loss": stats.final_loss,
        "trainable_params": trainable,
        "total_params": total,
        "model_bytes": final_bytes,
        "model_memory_bytes": model_memory_bytes(model),
        "adapter_bytes": trainable_bytes(model),
        "weight_sparsity": weight_sparsity(model),
        "weight_bits": compression.weight_bits,
        "compression_kernel": compression.kernel,
        "compressed_model_bytes": compression.compressed_bytes,
        "bits_per_parameter": 8 * stored_bytes / final_params if final_params else None,
        "compress_seconds": sum(c.seconds for c in pipeline.costs if c.compresses),
        "init_seconds": sum(c.seconds for c in pipeline.costs if c.phase == "before training"),
        "pipeline_seconds": sum(c.seconds for c in pipeline.costs),
        "pipeline_costs": json.dumps([asdict(c) for c in pipeline.costs]),
        "optimizer_state_bytes": stats.optimizer_state_bytes,
        "parameter_bytes": stats.memory.parameter_bytes if stats.memory else None,
        "gradient_bytes": stats.memory.gradient_bytes if stats.memory else None,
        "activation_bytes": stats.memory.activation_bytes if stats.memory else None,
        "train_flops": stats.flops,
        "train_flops_per_step": stats.flops_per_step,
        "mfu": mfu(
            stats.flops,
            stats.seconds,
            environment.device_name(device),
            run.precision,
            tf32=device.type == "cuda" and fp32_uses_tf32(model),
        ),
        "mfu_flops_kind": "executed" if stats.flops is not None else None,
        "peak_memory_bytes": stats.peak_memory_bytes,
        "peak_memory_reserved_bytes": stats.peak_memory_reserved_bytes,
        "peak_memory_kind": stats.peak_memory_kind or None,
        "peak_process_memory_bytes": stats.peak_process_memory_bytes,
        **evaluation.row,
        **inference,
        "adapter_overhead_share": profiles["train"].adapter_share if "train" in profiles else None,
        "adapter_overhead_share_inference": profiles["inference"].adapter_share if "inference" in profiles else None,
        "top_kernel_category": profiles["train"].top_category
        if "train" in profiles
        else (profiles["inference"].top_category if "inference" in profiles else None),
    }
    return columns, evaluation.examples


class PreparedOnUse:
    """The training split as model inputs, prepared when first used (`Suite.prepares_on_use`): a run
    that neither trains nor calibrates (an evaluation, a data-free compression) never prepares it,
    which for an lm-eval suite's pool of tens of thousands of documents is minutes."""

    def __init__(self, prepare, examples: int):
        self._prepare, self._prepared, self.examples = prepare, None, examples

    def _get(self):
        if self._prepared is None:
            self._prepared = self._prepare()
            if len(self._prepared.dataset) != self.examples:  # preparing encodes; it never drops
                raise RuntimeError(f"{self.examples} training examples became {len(self._prepared.dataset)}")
        return self._prepared

    def __getattr__(self, name: str):  # dataset, collate, references, token_labels
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._get(), name)


def tuning_role(run: ResolvedRun) -> str | None:
    """A tuning group's trial (scored on the selection split) or final (on the reported split)."""
    if run.tuning_group is None:
        return None
    return "trial" if run.evaluate_on == "selection" else "final"


def mean_tokens(data) -> float:
    """Mean input tokens per training example, for a token budget's step count."""
    try:
        column = data.dataset["input_ids"]
    except (KeyError, TypeError):
        raise HarnessError("--max-train-tokens needs a suite whose examples are token sequences") from None
    return sum(len(ids) for ids in column) / max(1, len(column))


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute activations in the backward pass (less memory, more time); non-reentrant, so
    frozen inputs (adapters on a frozen base) need no extra hooks."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise HarnessError(f"--gradient-checkpointing: {type(model).__name__} does not support gradient checkpointing")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
