"""Resolving a run: `resolve()` fills every default of a `RunSpec` from the suite and the
method, locates the data and the model, and gives the job its content hash. All bad input
surfaces here as a `HarnessError`, before anything is loaded or written. The data types
themselves (`RunSpec`, `ResolvedRun`, the identity) are in harness/spec/run.py.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pydantic import ValidationError

from harness.core.errors import HarnessError
from harness.data.resolve import DataSource, mirror_root, model_digest, preflight_model, resolve_model
from harness.evaluation.base import choose
from harness.methods.pipeline import Pipeline
from harness.spec.model_ref import ResolvedModel
from harness.spec.options import Fill, Opt, all_suite_options, check_suite_options
from harness.spec.run import RUN_OPTIONS, ResolvedRun, RunSpec, device_type, input_error
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


def _filled(spec: RunSpec, name: str, opt: Opt, suite_cls: type[Suite], pipeline: Pipeline):
    """An option's value: as given, else from where its declaration says (Opt.fill)."""
    value = getattr(spec, name)
    if value is not None or opt.fill is Fill.GIVEN:
        return value
    if opt.fill is Fill.SUITE:
        return getattr(suite_cls.defaults, name)
    if opt.fill is Fill.METHOD:
        return getattr(pipeline, f"default_{name}")
    return opt.fill  # a constant


def resolve(spec: RunSpec) -> tuple[ResolvedRun, Suite, Task, Pipeline, dict[str, DataSource]]:
    suite_cls = SUITES.get(spec.suite.lower())
    preset = suite_cls.get_preset(spec.preset)
    spec = preset.fill(spec) if preset else spec
    try:  # again: a spec made by model_copy or model_construct was not checked by RunSpec
        given = check_suite_options(suite_cls.name, spec.suite_options, list(RUN_OPTIONS))
    except ValidationError as exc:
        raise input_error(exc) from None
    suite_options, suite_options_changed = all_suite_options(suite_cls.Options, given)
    # Before any data or model is looked at: a backend that is unknown or cannot run here is bad input.
    backend = choose(suite_cls.eval_kind, spec.eval_backend, device_type(spec.device))
    if not spec.method:
        raise HarnessError("--method is required (or a --preset that names one)")
    suite = suite_cls()
    task = suite_cls.get_task(spec.task)
    pipeline = Pipeline.parse(spec.method)
    root = mirror_root(spec.data_dir)
    sources = suite.locate(task, root, train_data=suite_options.get("train_data"))
    model: ResolvedModel = resolve_model(spec.model or suite_cls.default_model)
    model_config = preflight_model(model)
    if model_config is not None:
        suite_cls.check_model_config(model_config, model.name)
    check_results_dir(spec.results_dir)
    options = {
        name: _filled(spec, name, opt, suite_cls, pipeline)
        for name, opt in RUN_OPTIONS.items()
        if opt.fill is not Fill.RESOLVER
    }
    resolved = ResolvedRun(
        **options,
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
        max_length=suite_cls.max_length_for(model_config, spec.max_length, model.name),
        device_type=device_type(spec.device),
        eval_backend=None if backend.current else backend.name,
        data_dir=str(root) if root else None,
        data_sources={split: src.origin for split, src in sources.items()},
        suite_options=suite_options,
        suite_options_changed=suite_options_changed,
    )
    return resolved, suite, task, pipeline, sources
