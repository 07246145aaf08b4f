"""Resolving a run: `resolve()` fills every default of a `RunSpec` from the suite and the
method, locates the data and the model, and gives the job its content hash. All bad input
surfaces here as a `HarnessError`, before anything is loaded or written. The data types
themselves (`RunSpec`, `ResolvedRun`, the identity) are in harness/spec/run.py.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.core.errors import HarnessError
from harness.data.resolve import DataSource, mirror_root, model_digest, preflight_model, resolve_model
from harness.methods.base import Pipeline
from harness.spec.model_ref import ResolvedModel
from harness.spec.run import ResolvedRun, RunSpec, device_type
from harness.suites.base import SUITES, Suite, Task


def check_results_dir(folder: str) -> None:
    """The store can be written: a folder, or one that can be made, in which a file can be
    created. Probed by creating and removing a file, since that is what counts (permission
    bits do not stop root; a read-only mount stops everyone)."""
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise HarnessError(f"--results {folder!r} exists and is not a directory")
    existing = path
    while not existing.exists():  # the nearest folder that exists: where creating it would start
        existing = existing.parent
    if not existing.is_dir():
        raise HarnessError(f"--results {folder!r} cannot be created: {str(existing)!r} is a file")
    try:
        handle, probe = tempfile.mkstemp(prefix=".harness-write-probe-", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise HarnessError(
            f"--results {folder!r} is not writable ({exc.strerror or exc}); pass another --results"
        ) from None


def _check_suite_options(spec: RunSpec, suite_cls: type[Suite]) -> None:
    """Options that only a causal-LM suite reads are an error elsewhere, not silently ignored."""
    if suite_cls.task_type == "causal_lm":
        return
    given = [
        flag
        for flag, value in (
            ("--packing", spec.packing),
            ("--train-data", spec.train_data),
            ("--num-fewshot", spec.num_fewshot),
            ("--max-new-tokens", spec.max_new_tokens),
        )
        if value not in (None, False)
    ]
    if given:
        lm_suites = ", ".join(name for name, cls in SUITES if cls.task_type == "causal_lm")
        raise HarnessError(f"{', '.join(given)} applies to causal-LM suites ({lm_suites}), not to {suite_cls.name!r}")


def resolve(spec: RunSpec) -> tuple[ResolvedRun, Suite, Task, Pipeline, dict[str, DataSource]]:
    suite_cls = SUITES.get(spec.suite.lower())
    _check_suite_options(spec, suite_cls)
    preset = suite_cls.get_preset(spec.preset)
    spec = preset.fill(spec) if preset else spec
    if not spec.method:
        raise HarnessError("--method is required (or a --preset that names one)")
    suite = suite_cls()
    task = suite_cls.get_task(spec.task)
    pipeline = Pipeline.parse(spec.method)
    root = mirror_root(spec.data_dir)
    sources = suite.locate(task, root, train_data=spec.train_data)
    model: ResolvedModel = resolve_model(spec.model or suite_cls.default_model)
    model_config = preflight_model(model)
    if model_config is not None:
        suite_cls.check_model_config(model_config, model.name)
    check_results_dir(spec.results_dir)
    d = suite_cls.defaults

    def pick(value, default):
        return value if value is not None else default

    resolved = ResolvedRun(
        suite=suite_cls.name,
        task=task.name,
        method=pipeline.spec(),
        method_params=pipeline.resolved_params(),
        method_versions=[m.version for m in pipeline.methods],
        model=model.name,
        model_hub_id=model.hub_id,
        model_location=model.location,
        model_source=model.source,
        model_digest=model_digest(model),
        seed=spec.seed,
        max_train_samples=spec.max_train_samples,
        max_eval_samples=spec.max_eval_samples,
        epochs=pick(spec.epochs, d.epochs),
        max_steps=spec.max_steps,
        lr=pick(spec.lr, pipeline.default_lr),
        batch_size=spec.batch_size or d.batch_size,
        eval_batch_size=spec.eval_batch_size or d.eval_batch_size,
        max_length=suite_cls.max_length_for(model_config, spec.max_length, model.name),
        warmup_ratio=pick(spec.warmup_ratio, d.warmup_ratio),
        weight_decay=pick(spec.weight_decay, d.weight_decay),
        max_grad_norm=pick(spec.max_grad_norm, 1.0),
        precision=pick(spec.precision, "fp32"),
        lr_scheduler=pick(spec.lr_scheduler, d.lr_scheduler),
        gradient_accumulation_steps=pick(spec.gradient_accumulation_steps, 1),
        gradient_checkpointing=spec.gradient_checkpointing,
        max_train_tokens=spec.max_train_tokens,
        packing=spec.packing,
        train_data=spec.train_data,
        num_fewshot=pick(spec.num_fewshot, d.num_fewshot),
        max_new_tokens=pick(spec.max_new_tokens, d.max_new_tokens),
        preset=spec.preset,
        kernel_profile=spec.kernel_profile,
        device=spec.device,
        device_type=device_type(spec.device),
        latency_warmup=spec.latency_warmup,
        latency_repeats=spec.latency_repeats,
        data_dir=str(root) if root else None,
        data_sources={split: src.origin for split, src in sources.items()},
        results_dir=spec.results_dir,
    )
    return resolved, suite, task, pipeline, sources
