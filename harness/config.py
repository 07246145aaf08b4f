"""What the user asks for (`RunSpec`) and what a job actually runs (`ResolvedRun`).

`RunSpec` validates the command line; `resolve()` fills every default from the suite
and the method, locates the data and the model, and gives the job its content hash.
All bad input surfaces here as a `HarnessError`, before anything is loaded or written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from harness import __version__
from harness.errors import HarnessError
from harness.method import Pipeline
from harness.resolve import DataSource, ResolvedModel, mirror_root, preflight_model, resolve_model
from harness.suite import SUITES, Suite, Task

# Subsets of a training split are drawn with this seed, not the run's seed, so that
# every method and every seed of a comparison sees the same examples.
DATA_SEED = 0


class RunSpec(BaseModel):
    """One run as the user describes it; None means "the suite's or method's default"."""

    model_config = ConfigDict(extra="forbid")

    suite: str
    method: str | None = None
    task: str | None = None
    model: str | None = None
    seed: int = 0
    max_train_samples: int | None = Field(None, gt=0)
    max_eval_samples: int | None = Field(None, gt=0)
    epochs: float | None = Field(None, gt=0)
    max_steps: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0)
    eval_batch_size: int | None = Field(None, gt=0)
    max_length: int | None = Field(None, gt=0)
    warmup_ratio: float | None = Field(None, ge=0, lt=1)
    weight_decay: float | None = Field(None, ge=0)
    max_grad_norm: float | None = Field(None, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    lr_scheduler: Literal["linear", "cosine"] | None = None
    gradient_accumulation_steps: int | None = Field(None, gt=0)
    gradient_checkpointing: bool = False
    max_train_tokens: int | None = Field(None, gt=0)
    # Causal-LM suites only.
    packing: bool = False
    train_data: str | None = None
    num_fewshot: int | None = Field(None, ge=0)
    max_new_tokens: int | None = Field(None, gt=0)
    preset: str | None = None
    kernel_profile: bool = True
    device: str = "auto"
    latency_warmup: int = Field(3, ge=0)
    latency_repeats: int = Field(20, gt=0)
    data_dir: str | None = None
    results_dir: str = "results"

    @classmethod
    def build(cls, **values: Any) -> "RunSpec":
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            raise HarnessError(f"--{loc.replace('_', '-')}={err.get('input')!r}: {err['msg']}") from None


class ResolvedRun(BaseModel):
    """Every setting of a job made concrete. The fields in `identity()` define the job hash."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    suite: str
    task: str
    method: str  # canonical pipeline string
    method_params: list[dict[str, Any]]
    model: str
    model_hub_id: str
    model_location: str
    model_source: str
    seed: int
    data_seed: int = DATA_SEED
    max_train_samples: int | None
    max_eval_samples: int | None
    epochs: float
    max_steps: int | None
    lr: float
    batch_size: int
    eval_batch_size: int
    max_length: int
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    precision: str
    lr_scheduler: str
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    max_train_tokens: int | None
    packing: bool
    train_data: str | None
    num_fewshot: int | None
    max_new_tokens: int | None
    preset: str | None
    kernel_profile: bool = True
    device: str
    latency_warmup: int
    latency_repeats: int
    data_dir: str | None
    data_sources: dict[str, str]
    results_dir: str
    harness_version: str = __version__

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same experiment (paths and output places excluded)."""
        keys = (
            "suite", "task", "method", "method_params", "model_hub_id", "seed", "data_seed", "max_train_samples",
            "max_eval_samples", "epochs", "max_steps", "lr", "batch_size", "eval_batch_size", "max_length",
            "warmup_ratio", "weight_decay", "max_grad_norm", "precision", "harness_version",
            "lr_scheduler", "gradient_accumulation_steps", "gradient_checkpointing", "max_train_tokens", "packing",
            "train_data", "num_fewshot", "max_new_tokens",
        )
        return {k: getattr(self, k) for k in keys}

    def model_ref(self) -> ResolvedModel:
        return ResolvedModel(self.model, self.model_hub_id, self.model_location, self.model_source)

    @property
    def job_hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _check_suite_options(spec: RunSpec, suite_cls: type[Suite]) -> None:
    """Options that only a causal-LM suite reads are an error elsewhere, not silently ignored."""
    if suite_cls.task_type == "causal_lm":
        return
    given = [flag for flag, value in (
        ("--packing", spec.packing), ("--train-data", spec.train_data), ("--num-fewshot", spec.num_fewshot),
        ("--max-new-tokens", spec.max_new_tokens),
    ) if value not in (None, False)]
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
    if Path(spec.results_dir).exists() and not Path(spec.results_dir).is_dir():
        raise HarnessError(f"--results {spec.results_dir!r} exists and is not a directory")
    d = suite_cls.defaults

    def pick(value, default):
        return value if value is not None else default

    resolved = ResolvedRun(
        suite=suite_cls.name,
        task=task.name,
        method=pipeline.spec(),
        method_params=pipeline.resolved_params(),
        model=model.name,
        model_hub_id=model.hub_id,
        model_location=model.location,
        model_source=model.source,
        seed=spec.seed,
        max_train_samples=spec.max_train_samples,
        max_eval_samples=spec.max_eval_samples,
        epochs=pick(spec.epochs, d.epochs),
        max_steps=spec.max_steps,
        lr=pick(spec.lr, pipeline.default_lr),
        batch_size=spec.batch_size or d.batch_size,
        eval_batch_size=spec.eval_batch_size or d.eval_batch_size,
        max_length=spec.max_length or d.max_length,
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
        latency_warmup=spec.latency_warmup,
        latency_repeats=spec.latency_repeats,
        data_dir=str(root) if root else None,
        data_sources={split: src.origin for split, src in sources.items()},
        results_dir=spec.results_dir,
    )
    return resolved, suite, task, pipeline, sources
