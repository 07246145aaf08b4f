"""What the user asks for (`RunSpec`) and what a job actually runs (`ResolvedRun`), and the
job identity: pure data, validated where it enters. `harness.engine.resolve.resolve()` makes a
`ResolvedRun` from a `RunSpec` (it needs the suites and methods, which sit above this module).

Each run option is declared once, as a RunSpec field with its `Opt` (harness/spec/options.py):
the `harness run` flags, `ResolvedRun`'s fields and the identity are made from these declarations.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from harness import __version__
from harness.core.errors import HarnessError
from harness.spec.model_ref import ResolvedModel
from harness.spec.numbers import Count, NonNegativeCount, Number, Seed
from harness.spec.options import Fill, Opt, check_suite_options
from harness.spec.subsets import DATA_SEED


def _folder_name(value: str) -> str:
    # A blank folder name would write the store into the current folder.
    if not value.strip():
        raise PydanticCustomError("blank_folder", "a folder name, not blank")
    return value


# Far beyond any published fine-tuning schedule (He et al. 2016 train CIFAR ResNets for about 164
# epochs); larger is a typo, and 1e300 epochs would overflow the step count of the row.
MAX_EPOCHS = 1e6

OptStr = str | None
OptInt = int | None


class RunSpec(BaseModel):
    """One run as the user describes it; None means "the suite's or method's default". Keys that
    are not run options are the suite's own options (`suite_options`, checked against its Options)."""

    # ser_json_inf_nan: a non-finite value that got past validation (model_construct) reaches
    # the worker as Infinity and is refused there, never as null ("not given").
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, ser_json_inf_nan="constants")

    suite: Annotated[str, Opt("Suite name (see `harness list suites`).", short="-s", fill=Fill.RESOLVER, resolved=str)]
    method: Annotated[
        str | None,
        Opt(
            "Method or pipeline (+), e.g. lora:r=16,alpha=32; wanda:sparsity=0.5+lora (prune, then recover); "
            "lora+int8 (adapt, merge, then quantize). Required unless --preset names one.",
            short="-m",
            fill=Fill.RESOLVER,
            resolved=str,
        ),
    ] = None
    task: Annotated[
        str | None,
        Opt("Task of the suite (see `harness list tasks`).", short="-t", fill=Fill.RESOLVER, resolved=str),
    ] = None
    model: Annotated[
        str | None,
        Opt(
            "Model alias, local directory or hub id; default: the suite's.",
            fill=Fill.RESOLVER,
            resolved=str,
            identity="never",  # the identity holds model_hub_id and model_digest
        ),
    ] = None
    seed: Annotated[Seed, Opt("Seed for initialisation, shuffling and dropout.", resolved=int)] = 0
    max_train_samples: Annotated[Count | None, Opt("Train on a fixed subset of this size.", resolved=OptInt)] = None
    max_eval_samples: Annotated[
        Count | None,
        Opt(
            "Evaluate on a fixed random N examples (the same for every run); gsm8k: the first N, as lm-eval's --limit.",
            resolved=OptInt,
        ),
    ] = None
    # The selection split: what tuning scores its trials on. Hashed only when set, so runs without it
    # keep their hashes; with it, the training subset is drawn from the rest of the training split.
    selection_samples: Annotated[
        Count | None,
        Opt(
            "Hold out this many training examples as the selection split (the same for every method "
            "and seed, never trained on); a suite with its own (vtab: val200) uses that.",
            resolved=OptInt,
            identity="changed",
        ),
    ] = None
    evaluate_on: Annotated[
        Literal["reported", "selection"],
        Opt(
            "reported: the task's evaluation split(s); selection: the held-out selection split "
            "(what tuning trials are scored on).",
            resolved=str,
            identity="changed",
        ),
    ] = "reported"
    epochs: Annotated[
        Number | None,
        Field(gt=0, le=MAX_EPOCHS),
        Opt("Training epochs (suite default if omitted).", fill=Fill.SUITE, resolved=float),
    ] = None
    max_steps: Annotated[Count | None, Opt("Optimizer steps; overrides --epochs.", resolved=OptInt)] = None
    lr: Annotated[
        Number | None,
        Field(gt=0),
        Opt("Peak learning rate (method default if omitted).", fill=Fill.METHOD, resolved=float),
    ] = None
    head_lr: Annotated[
        Number | None,
        Field(gt=0),
        Opt(
            "Learning rate of the freshly initialised task head (default: the method's rate); "
            "`harness tune` gives every method the same one.",
            resolved=float | None,
            identity="changed",
        ),
    ] = None
    batch_size: Annotated[Count | None, Opt("Training batch size.", fill=Fill.SUITE, resolved=int)] = None
    eval_batch_size: Annotated[
        Count | None, Opt("Evaluation and latency batch size.", fill=Fill.SUITE, resolved=int)
    ] = None
    # resolve(): the suite's default, cut to the model's positions (Suite.max_length_for).
    max_length: Annotated[
        Count | None, Opt("Truncate inputs to this many tokens.", fill=Fill.RESOLVER, resolved=int)
    ] = None
    precision: Annotated[
        Literal["fp32", "bf16", "fp16"] | None,
        Opt("fp32 (default), bf16 or fp16 (autocast).", fill="fp32", resolved=str),
    ] = None
    warmup_ratio: Annotated[
        Number | None,
        Field(ge=0, lt=1),
        Opt("Share of steps with linear warm-up (suite default if omitted).", fill=Fill.SUITE, resolved=float),
    ] = None
    weight_decay: Annotated[
        Number | None,
        Field(ge=0),
        Opt("AdamW weight decay (suite default if omitted).", fill=Fill.SUITE, resolved=float),
    ] = None
    max_grad_norm: Annotated[
        Number | None,
        Field(ge=0),
        Opt("Clip the gradient norm to this (default 1.0; 0: no clipping).", fill=1.0, resolved=float),
    ] = None
    lr_scheduler: Annotated[
        Literal["linear", "cosine"] | None,
        Opt("linear or cosine, after warm-up (suite default if omitted).", fill=Fill.SUITE, resolved=str),
    ] = None
    gradient_accumulation_steps: Annotated[
        Count | None,
        Opt("Micro-batches of --batch-size per optimizer step (default 1).", flag="--grad-accum", fill=1, resolved=int),
    ] = None
    gradient_checkpointing: Annotated[
        StrictBool, Opt("Recompute activations in backward: less memory, more time.", resolved=bool)
    ] = False
    deterministic: Annotated[
        StrictBool,
        Opt(
            "Deterministic algorithms where torch has them (torch.use_deterministic_algorithms, warn "
            "only); slower; for gates that compare nights.",
            resolved=bool,
            identity="changed",
        ),
    ] = False
    max_train_tokens: Annotated[
        Count | None,
        Opt("Token budget: stop training after this many non-padding tokens.", resolved=OptInt),
    ] = None
    kernel_profile: Annotated[
        StrictBool,
        Opt(
            "Profile a few training steps and inference batches with torch.profiler (kernel table in "
            "<results>/_kernels).",
            negatable=True,
            resolved=bool,
        ),
    ] = True
    preset: Annotated[
        str | None,
        Opt(
            "A published setup by name (e.g. gsm8k's peft-metamathqa); flags given still win.",
            resolved=OptStr,
            identity="never",  # what it fills is hashed
        ),
    ] = None
    device: Annotated[
        str,
        # The identity holds device_type: a run on cuda:0 and on cuda:3 is the same experiment.
        Opt("auto, cpu, cuda or cuda:N.", resolved=str, identity="never"),
    ] = "auto"
    latency_warmup: Annotated[
        NonNegativeCount, Opt("Untimed forward passes before each latency measurement.", cli=False, resolved=int)
    ] = 3
    latency_repeats: Annotated[Count, Opt("Timed repeats per latency percentile.", resolved=int)] = 20
    # resolve(): None when the backend chosen is the suite's own path, so that the harness's own path
    # keeps the hashes of runs made before backends were chosen.
    eval_backend: Annotated[
        str | None,
        Opt(
            "Evaluation backend by name (harness/evaluation); default: the automatic choice.",
            cli=False,
            fill=Fill.RESOLVER,
            resolved=OptStr,
            identity="changed",
        ),
    ] = None
    # Set by `harness tune` on its trials and finals: the tuning protocol a run belongs to
    # (harness/execution/tune.py). Hashed when set: a final is not the plain run at the same values.
    tuning_group: Annotated[
        str | None,
        Opt(
            "The tuning group a run belongs to (set by `harness tune`).", cli=False, resolved=OptStr, identity="changed"
        ),
    ] = None
    # Recorded on finals by `harness tune`: the hyperparameters it searched, at the values it picked.
    # Not hashed: the values themselves are (lr, the method's parameters), and the group is.
    tuned: Annotated[
        dict[str, Any] | None,
        Opt(
            "What tuning searched, at the values it picked (set by `harness tune`).",
            cli=False,
            resolved=dict[str, Any] | None,
            identity="never",
        ),
    ] = None
    data_dir: Annotated[
        str | None,
        Opt(
            "Local mirror root laid out as <root>/<hub id>/<config>/<split>-*.parquet [env: HARNESS_DATA_DIR].",
            fill=Fill.RESOLVER,
            resolved=OptStr,
            identity="never",
        ),
    ] = None
    results_dir: Annotated[
        str,
        AfterValidator(_folder_name),
        Opt("Result store folder.", flag="--results", resolved=str, identity="never"),
    ] = "results"
    # The suite's own options (Suite.Options) as given; given as top-level keys like any option.
    suite_options: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _suite_options_apart(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        own = {k: v for k, v in data.items() if k not in cls.model_fields}
        if not own:
            return data
        nested = dict(data.get("suite_options") or {})
        twice = sorted(set(own) & set(nested))
        if twice:
            raise PydanticCustomError(
                "given_twice", "given both as a key and in suite_options: {keys}", {"keys": twice}
            )
        return {**{k: v for k, v in data.items() if k in cls.model_fields}, "suite_options": {**nested, **own}}

    def __init__(self, **values: Any) -> None:
        super().__init__(**values)
        # Checked against the suite here (model_validate and model_validate_json call __init__ too),
        # where a bad key can still be named where it was written: a sweep file's line.
        if self.suite_options:
            self.suite_options = check_suite_options(self.suite, self.suite_options, list(RUN_OPTIONS))

    def given(self) -> dict[str, Any]:
        """What the user set: the options not at their defaults, and every suite option given, as
        keyword arguments of RunSpec."""
        return {**self.model_dump(exclude_defaults=True, exclude={"suite_options"}), **self.suite_options}

    def under(self, settings: dict[str, Any]) -> "RunSpec":
        """This spec, with `settings` (option -> value) for what it does not set itself."""
        return type(self)(**{**settings, **self.given()})

    @classmethod
    def build(cls, flags: dict[str, str] | None = None, **values: Any) -> "RunSpec":
        """A RunSpec from user input; a bad value is one line naming the flag it came by (`flags`:
        option -> how the user wrote it, where that was not its flag, e.g. --set lr)."""
        try:
            return cls(**values)
        except ValidationError as exc:
            raise input_error(exc, flags) from None


def input_error(exc: ValidationError, flags: dict[str, str] | None = None) -> HarnessError:
    """The first error of a RunSpec (or suite options) validation, as one line naming the flag."""
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    given = (flags or {}).get(field) or flag_of(field)
    return HarnessError(f"{given}={err.get('input')!r}: {err['msg']}")


# Every run option's declaration, in RunSpec order.
RUN_OPTIONS: dict[str, Opt] = {
    name: next(m for m in field.metadata if isinstance(m, Opt))
    for name, field in RunSpec.model_fields.items()
    if any(isinstance(m, Opt) for m in field.metadata)
}


def flag_of(field: str) -> str:
    """How `harness run` takes an option: its flag; `--set NAME` for one without a flag; a suite's
    option by its own name (--num-fewshot), as the command line takes it."""
    opt = RUN_OPTIONS.get(field)
    if opt is not None and not opt.cli:
        return f"--set {field}"
    return (opt.flag if opt is not None else None) or "--" + field.replace("_", "-")


# Options whose `harness run` flag is not the field's own name.
RUN_FLAGS = {name: opt.flag for name, opt in RUN_OPTIONS.items() if opt.cli and opt.flag}


# The version of the job-identity scheme (which fields, how they are hashed). It is hashed
# with them, so that hashes of two schemes never meet. Changing the scheme changes every hash:
# bump it, bump SCHEMA_VERSION (job_hash changes meaning), and in harness/results/upgrade.py add
# a step that re-keys the old rows and move IDENTITY_SCHEMA to the new schema version. Scheme 1
# hashed the package version and every method parameter; it left out the device, kernel
# profiling and latency settings.
IDENTITY_VERSION = 2

# Suite options that were run options of every suite when identity version 2 was fixed: every job
# hashes them under their own names, at these values where its suite does not declare them (or at
# the suite's resolved value where it does), so that the hashes of version 2 stay what they were.
LEGACY_SUITE_OPTIONS: dict[str, Any] = {
    "packing": False,
    "train_data": None,
    "num_fewshot": None,
    "max_new_tokens": None,
}

# What makes two runs the same experiment: every setting that can change a result, and no
# path or output place. `method` is the canonical pipeline with its non-default parameters
# only, so a new parameter whose default keeps the old behaviour keeps old hashes; the
# methods' `version`s stand for their code. The device enters by type (cpu, cuda), not index;
# the model by its content or hub revision (`model_digest`), beside its hub id.
# The run options with identity "always" come from their declarations (RunSpec); an option with
# identity "changed" (eval_backend) is hashed only when it is not at its default. Suite options
# other than LEGACY_SUITE_OPTIONS are hashed, under "suite_options", only those not at their
# default, as method parameters are: a suite that declares a new option keeps every old hash, and
# a run that sets it is another experiment.
IDENTITY_KEYS = (
    *(name for name, opt in RUN_OPTIONS.items() if opt.identity == "always"),
    "method_versions",
    "model_hub_id",
    "model_digest",
    "data_seed",
    "device_type",
    *LEGACY_SUITE_OPTIONS,
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


class _ResolvedRun(BaseModel):
    """What the resolver adds beside the run options, the identity and the job hash; ResolvedRun
    below adds a field per run option."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    method_params: list[dict[str, Any]]  # every parameter resolved, for readers; not hashed
    method_versions: list[int]  # each pipeline step's Method.version
    model_hub_id: str
    model_location: str
    model_source: str
    model_digest: str  # resolve.model_digest: content digest or hub revision
    data_seed: int = DATA_SEED
    device_type: str  # the identity's device (the option `device` is as given: auto, cpu, cuda:1)
    data_sources: dict[str, str]
    # Every option the suite declares, resolved (what the suite reads), and those not at their
    # default (hashed, LEGACY_SUITE_OPTIONS aside: see IDENTITY_KEYS).
    suite_options: dict[str, Any] = {}
    suite_options_changed: dict[str, Any] = {}
    harness_version: str = __version__  # recorded, not hashed: a release or a source tree runs the same code

    @model_validator(mode="before")
    @classmethod
    def _legacy_suite_options(cls, data: Any) -> Any:
        """A config written before suites declared their options holds LEGACY_SUITE_OPTIONS as
        fields of their own: they become suite options (those at their old default said nothing)."""
        if not isinstance(data, dict) or not any(k in data for k in LEGACY_SUITE_OPTIONS):
            return data
        data = dict(data)
        lifted = {k: data.pop(k) for k in LEGACY_SUITE_OPTIONS if k in data}
        kept = {k: v for k, v in lifted.items() if v != LEGACY_SUITE_OPTIONS[k]}
        options = dict(data.get("suite_options") or {})
        clash = [k for k, v in kept.items() if k in options and options[k] != v]
        if clash:
            raise PydanticCustomError("given_twice", "{keys} given twice, with two values", {"keys": clash})
        data["suite_options"] = {**kept, **options}
        return data

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same experiment (see IDENTITY_KEYS)."""
        identity = {"identity_version": IDENTITY_VERSION}
        for key in IDENTITY_KEYS:
            legacy = key in LEGACY_SUITE_OPTIONS
            identity[key] = self.suite_options.get(key, LEGACY_SUITE_OPTIONS[key]) if legacy else getattr(self, key)
        for name, opt in RUN_OPTIONS.items():
            if opt.identity == "changed" and getattr(self, name) != RunSpec.model_fields[name].default:
                identity[name] = getattr(self, name)
        changed = {k: v for k, v in sorted(self.suite_options_changed.items()) if k not in LEGACY_SUITE_OPTIONS}
        if changed:
            identity["suite_options"] = changed
        return identity

    def model_ref(self) -> ResolvedModel:
        return ResolvedModel(self.model, self.model_hub_id, self.model_location, self.model_source)

    @property
    def job_hash(self) -> str:
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _resolved_field(name: str, opt: Opt) -> tuple[Any, Any]:
    # An option taken as given defaults to the RunSpec default, as resolve() would resolve it; one
    # resolved otherwise must be given. (A field hashed only when changed is one of the first kind
    # or defaults to its RunSpec default too: left out, it is at its default.)
    field = RunSpec.model_fields[name]
    as_given = opt.fill is Fill.GIVEN or opt.identity == "changed"
    return (opt.resolved, field.default if as_given and not field.is_required() else ...)


ResolvedRun = create_model(
    "ResolvedRun",
    __base__=_ResolvedRun,
    __module__=__name__,
    __doc__="Every setting of a job made concrete. The fields in `identity()` define the job hash.",
    **{name: _resolved_field(name, opt) for name, opt in RUN_OPTIONS.items()},
)
