"""What the user asks for (`RunSpec`) and what a job actually runs (`ResolvedRun`), and the
job identity: pure data, validated where it enters. `harness.engine.resolve.resolve()` makes a
`ResolvedRun` from a `RunSpec` (it needs the suites and methods, which sit above this module).
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationError
from pydantic_core import PydanticCustomError

from harness import __version__
from harness.core.errors import HarnessError
from harness.spec.model_ref import ResolvedModel
from harness.spec.numbers import Count, NonNegativeCount, Number, Seed
from harness.spec.subsets import DATA_SEED


def _folder_name(value: str) -> str:
    # A blank folder name would write the store into the current folder.
    if not value.strip():
        raise PydanticCustomError("blank_folder", "a folder name, not blank")
    return value


# Far beyond any published fine-tuning schedule (He et al. 2016 train CIFAR ResNets for about 164
# epochs); larger is a typo, and 1e300 epochs would overflow the step count of the row.
MAX_EPOCHS = 1e6

# RunSpec fields whose `harness run` flag is not the field's own name.
RUN_FLAGS = {"gradient_accumulation_steps": "--grad-accum", "results_dir": "--results"}


def flag_of(field: str) -> str:
    return RUN_FLAGS.get(field, "--" + field.replace("_", "-"))


class RunSpec(BaseModel):
    """One run as the user describes it; None means "the suite's or method's default"."""

    # ser_json_inf_nan: a non-finite value that got past validation (model_construct) reaches
    # the worker as Infinity and is refused there, never as null ("not given").
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, ser_json_inf_nan="constants")

    suite: str
    method: str | None = None
    task: str | None = None
    model: str | None = None
    seed: Seed = 0
    max_train_samples: Count | None = None
    max_eval_samples: Count | None = None
    epochs: Number | None = Field(None, gt=0, le=MAX_EPOCHS)
    max_steps: Count | None = None
    lr: Number | None = Field(None, gt=0)
    batch_size: Count | None = None
    eval_batch_size: Count | None = None
    max_length: Count | None = None
    warmup_ratio: Number | None = Field(None, ge=0, lt=1)
    weight_decay: Number | None = Field(None, ge=0)
    max_grad_norm: Number | None = Field(None, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] | None = None
    lr_scheduler: Literal["linear", "cosine"] | None = None
    gradient_accumulation_steps: Count | None = None
    gradient_checkpointing: StrictBool = False
    max_train_tokens: Count | None = None
    # Causal-LM suites only.
    packing: StrictBool = False
    train_data: str | None = None
    num_fewshot: NonNegativeCount | None = None
    max_new_tokens: Count | None = None
    preset: str | None = None
    kernel_profile: StrictBool = True
    device: str = "auto"
    latency_warmup: NonNegativeCount = 3
    latency_repeats: Count = 20
    data_dir: str | None = None
    results_dir: Annotated[str, AfterValidator(_folder_name)] = "results"

    @classmethod
    def build(cls, **values: Any) -> "RunSpec":
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            raise HarnessError(f"{flag_of(field)}={err.get('input')!r}: {err['msg']}") from None


# The version of the job-identity scheme (which fields, how they are hashed). It is hashed
# with them, so that hashes of two schemes never meet. Changing the scheme changes every hash:
# bump it, bump SCHEMA_VERSION (job_hash changes meaning), and in harness/results/upgrade.py add
# a step that re-keys the old rows and move IDENTITY_SCHEMA to the new schema version. Scheme 1
# hashed the package version and every method parameter; it left out the device, kernel
# profiling and latency settings.
IDENTITY_VERSION = 2

# What makes two runs the same experiment: every setting that can change a result, and no
# path or output place. `method` is the canonical pipeline with its non-default parameters
# only, so a new parameter whose default keeps the old behaviour keeps old hashes; the
# methods' `version`s stand for their code. The device enters by type (cpu, cuda), not index;
# the model by its content or hub revision (`model_digest`), beside its hub id.
IDENTITY_KEYS = (
    "suite",
    "task",
    "method",
    "method_versions",
    "model_hub_id",
    "model_digest",
    "seed",
    "data_seed",
    "max_train_samples",
    "max_eval_samples",
    "epochs",
    "max_steps",
    "lr",
    "batch_size",
    "eval_batch_size",
    "max_length",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "precision",
    "lr_scheduler",
    "gradient_accumulation_steps",
    "gradient_checkpointing",
    "max_train_tokens",
    "packing",
    "train_data",
    "num_fewshot",
    "max_new_tokens",
    "device_type",
    "kernel_profile",
    "latency_warmup",
    "latency_repeats",
)


def device_type(device: str) -> str:
    """The kind of device a --device value runs on: cpu or cuda (auto: CUDA when torch sees a GPU,
    as the job's own choice of device)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return torch.device(device).type
    except RuntimeError:
        raise HarnessError(f"--device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None


class ResolvedRun(BaseModel):
    """Every setting of a job made concrete. The fields in `identity()` define the job hash."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    suite: str
    task: str
    method: str  # canonical pipeline string
    method_params: list[dict[str, Any]]  # every parameter resolved, for readers; not hashed
    method_versions: list[int]  # each pipeline step's Method.version
    model: str
    model_hub_id: str
    model_location: str
    model_source: str
    model_digest: str  # resolve.model_digest: content digest or hub revision
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
    device: str  # as given (auto, cpu, cuda:1); the identity holds device_type
    device_type: str
    latency_warmup: int
    latency_repeats: int
    data_dir: str | None
    data_sources: dict[str, str]
    results_dir: str
    harness_version: str = __version__  # recorded, not hashed: a release or a source tree runs the same code

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same experiment (see IDENTITY_KEYS)."""
        return {"identity_version": IDENTITY_VERSION, **{k: getattr(self, k) for k in IDENTITY_KEYS}}

    def model_ref(self) -> ResolvedModel:
        return ResolvedModel(self.model, self.model_hub_id, self.model_location, self.model_source)

    @property
    def job_hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]
