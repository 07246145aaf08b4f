"""The method contract: a small object with optional hooks.

A method (adaptation or compression) is a subclass of `Method` registered by name in
`METHODS`. Its parameters are a pydantic model (`Params`) whose defaults come from the
method's paper; a wrong name or value is a `HarnessError`. The training loop calls the
hooks in this order:

    model = apply(model, ctx)            wrap, freeze, quantize, prune
    opt   = optimizer(trainable, ctx)    None -> the loop's AdamW
    each step: backward (plus extra_loss(model)), optimizer.step(), on_step(step, model), zero_grad()
    model = finalize(model)              merge, prune ranks, export

`on_step` runs while gradients are still present (AdaLoRA's rank allocation needs them).
Several methods compose into a `Pipeline` (harness/methods/pipeline.py), applied left to right.
A method is registered as `@METHODS.register("name")`; the registry sets its `name`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.core.errors import HarnessError
from harness.core.registry import Registry, summary_of
from harness.measure.kernels import AdapterScope
from harness.spec.method_spec import MethodStep

METHODS: Registry[type["Method"]] = Registry(
    "method", package="harness.methods", entry_point_group="harness.methods", name_attribute="name"
)


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodParams(BaseModel):
    """Base for method parameters: unknown keys are errors, values are validated: numbers are
    finite and types strict (true is not rank 1, 1 is not true; an int still serves a float)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


@dataclass
class MethodContext:
    """What a method may need to know about the job it is applied in."""

    task_type: str  # "seq_cls" (sequence classification / regression), "causal_lm" or "image_cls"
    head_modules: tuple[str, ...] = ()  # freshly initialised task head: always trained
    dense_modules: tuple[str, ...] = ()  # pretrained, but left out of compression (a causal LM's lm_head)
    total_steps: int = 0
    lr: float = 0.0
    # The task head's own rate (None: the method's `lr`), the same for every method a comparison tunes.
    head_lr: float | None = None
    weight_decay: float = 0.0
    seed: int = 0
    # Training recomputes activations in the backward pass (--gradient-checkpointing).
    gradient_checkpointing: bool = False
    # The task head in `head_modules` was freshly initialised for this job, not loaded from the
    # checkpoint: it scores at chance until something trains it.
    fresh_head: bool = False
    # Batches of the training split for methods that calibrate or initialise from data
    # (EVA, CorDA, LoRA-GA, Wanda, ...): sample_batches(n) yields n collated batches.
    sample_batches: Callable[[int], Iterator[dict[str, torch.Tensor]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def batches(self, n: int, device: torch.device | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """n training batches; with `device`, their tensors moved there (a model's inputs)."""
        if self.sample_batches is None:
            raise HarnessError("this method needs training batches, but the job provided none")
        if device is None:
            return self.sample_batches(n)
        return ({k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()} for b in self.sample_batches(n))

    @property
    def uncompressed_modules(self) -> tuple[str, ...]:
        """What compression leaves in full precision: the task head and the suite's dense modules."""
        return self.head_modules + self.dense_modules

    @property
    def peft_task_type(self) -> str | None:
        return {"seq_cls": "SEQ_CLS", "causal_lm": "CAUSAL_LM"}.get(self.task_type)


def head_is_fresh(model: torch.nn.Module, head_modules: tuple[str, ...]) -> bool:
    """Whether the task head was freshly initialised rather than loaded with the checkpoint.

    transformers (5.x) marks each tensor it loaded from a checkpoint `_is_hf_initialized`; in a
    model it loaded, a head parameter without the mark was drawn at random (a checkpoint
    without a head, or with another label count). A model with no marks at all (a plain torch
    checkpoint, one built from a config, older transformers) gives no evidence: False."""
    params = list(model.named_parameters())
    if not head_modules or not any(getattr(p, "_is_hf_initialized", False) for _, p in params):
        return False
    in_head = lambda name: any(name.startswith(h + ".") or f".{h}." in f".{name}" for h in head_modules)  # noqa: E731
    return any(not getattr(p, "_is_hf_initialized", False) for name, p in params if in_head(name))


@dataclass(frozen=True)
class Compression:
    """What a compression method did to the weights, for the result row.

    `kernel` is "real" when inference ran a low-precision or sparse kernel, "simulated"
    when the compressed weights were computed in a dense float kernel (fake quantization,
    masked dense weights): such a model's latency and memory are not the compressed ones.
    """

    weight_bits: float | None = None  # effective bits per weight of the compressed layers, scales included
    kernel: str | None = None  # "real" or "simulated"
    compressed_bytes: int | None = None  # the model's size stored in its compressed format

    @staticmethod
    def combine(parts: list["Compression"]) -> "Compression | None":
        """Pipeline steps in order. Each step computes its figures from the final weights (a
        quantizer checks they are still on its grid, pruning counts the non-zeros left), so each
        size is that of a format the final weights can really be stored in: the row takes the
        smallest, with that format's bits per weight. No joint format (int8 codes in a sparse
        layout) is claimed, since no step implements one. Simulated wins over real."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        kernels = {p.kernel for p in parts}
        kernel = "simulated" if "simulated" in kernels else "real" if "real" in kernels else None
        sized = [p for p in parts if p.compressed_bytes is not None]
        if sized:
            smallest = min(sized, key=lambda p: p.compressed_bytes)
            return Compression(smallest.weight_bits, kernel, smallest.compressed_bytes)
        bits = next((p.weight_bits for p in reversed(parts) if p.weight_bits is not None), None)
        return Compression(bits, kernel, None)


class Method:
    """Base class; subclasses set the class attributes and override the hooks they need."""

    name: ClassVar[str] = ""  # set by METHODS.register
    category: ClassVar[str] = ""  # e.g. "full", "selective", "low-rank", "scaling", "quantization"
    # Compression steps change the model rather than choose what trains. In a pipeline a
    # compression step before the last adaptation step runs before training (prune, then
    # recover); one after it runs on the trained, merged model (adapt, merge, then quantize).
    compresses: ClassVar[bool] = False
    # A compression step whose format is a grid of values (quantization): weights that later
    # training or a merged adapter changes leave the grid, and the format no longer holds.
    quantizes: ClassVar[bool] = False
    # A step that trains the model's own weights (full, LISA, GaLore) rather than parameters
    # added beside them: after a quantizer it would train the quantized weights off their grid.
    trains_base_weights: ClassVar[bool] = False
    # A step whose output no later step can handle (torch's dynamically quantized modules have
    # no trainable or compressible weights): it may only come last.
    must_be_last: ClassVar[bool] = False
    # Whether training through this step's forward gives correct gradients when activations
    # are recomputed in the backward pass (gradient checkpointing).
    supports_gradient_checkpointing: ClassVar[bool] = True
    # Whether the step trains anything at all (`none` evaluates the model as loaded).
    trains: ClassVar[bool] = True
    paper: ClassVar[str] = ""  # short citation: authors, title, venue year
    Params: ClassVar[type[BaseModel]] = NoParams
    # Default learning rate when the user gives none, and where it comes from: the paper,
    # table or official script (or peft's example for the method). A subclass sets both; a
    # rate picked from the harness's own scores has no place here.
    default_lr: ClassVar[float] = 5e-4
    default_lr_source: ClassVar[str] = ""
    # The implementation's version, part of every job's identity. Bump it with any change that
    # alters the method's results (a fix, a new default, another initialisation or update
    # rule), so that rows of the old code stop counting as done. A new parameter whose default
    # keeps the old behaviour needs no bump: only non-default parameters are in the identity.
    version: ClassVar[int] = 1

    def __init__(self, params: BaseModel | None = None):
        self.params = params if params is not None else self.Params()
        # What the step learned while it ran (calibration tokens used, ranks kept): kept live,
        # so facts found in finalize reach the row's pipeline_costs too.
        self.notes: dict[str, Any] = {}

    @classmethod
    def from_step(cls, step: MethodStep) -> "Method":
        try:
            params = cls.Params(**step.params)
        except ValidationError as exc:
            raise HarnessError(_one_line_validation_error(cls, exc)) from None
        return cls(params)

    @classmethod
    def summary(cls) -> str:
        return summary_of(cls)

    def spec(self) -> str:
        """Canonical string for this method and its non-default parameters."""
        changed = self.params.model_dump(exclude_defaults=True)
        return str(MethodStep(self.name, changed))

    def resolved_params(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")

    # Hooks -----------------------------------------------------------------
    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        return model

    def optimizer(self, params: list[torch.nn.Parameter], ctx: MethodContext) -> torch.optim.Optimizer | None:
        return None

    def on_step(self, step: int, model: torch.nn.Module) -> None:
        pass

    def extra_loss(self, model: torch.nn.Module) -> torch.Tensor | None:
        """A term the method adds to each optimizer step's loss (SoRA's L1 on its gates), or None."""
        return None

    def finalize(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def preflight(self, model: torch.nn.Module, ctx: MethodContext) -> None:
        """For a step that runs after training: raise HarnessError now if it cannot apply to
        this model (on this device), so bad input is refused before the training is spent."""

    # Whether `merge` can fold this method's training into plain weights. Methods that train
    # the weights themselves (full, bitfit, LISA, GaLore) have nothing to fold.
    can_merge: ClassVar[bool] = True

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        """The trained model with its adaptation folded into plain layers, for a compression
        step that follows (asked after finalize)."""
        return model

    def compression(self, model: torch.nn.Module) -> Compression | None:
        """For compression methods: what was done to the weights (asked after finalize)."""
        return None

    def adapter_scopes(self, model: torch.nn.Module) -> list[AdapterScope]:
        """The modules this method added to `model` whose forward is its own work, each with the
        base layer it calls excluded: what the kernel profile counts as adapter time."""
        return []

    @property
    def merges_into_weights(self) -> bool:
        """Whether `finalize` folds this step's training into the base weights (`merge=true`)."""
        return bool(getattr(self.params, "merge", False))

    # A quantizer that can put its layers back on its grid after a later step merged into
    # them (`requantize`); one that cannot is refused before a merging step.
    can_requantize: ClassVar[bool] = False

    def requantize(self, model: torch.nn.Module) -> torch.nn.Module:
        """Quantize this step's layers again, after a later step merged an update into them."""
        return model


def _one_line_validation_error(cls: type[Method], exc: ValidationError) -> str:
    problems = []
    valid = ", ".join(cls.Params.model_fields) or "none"
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "?"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown parameter {loc!r} (valid: {valid})")
        else:
            problems.append(f"{loc}={err.get('input')!r}: {err['msg']}")
    return f"method {cls.name!r}: " + "; ".join(problems)


def freeze_all_but(model: torch.nn.Module, keep: Iterable[str] = (), predicate=None) -> None:
    """Freeze every parameter except those under a module named in `keep` or matching `predicate(name, param)`."""
    keep = tuple(keep)
    for name, param in model.named_parameters():
        under_kept = any(name == k or name.startswith(k + ".") or f".{k}." in f".{name}" for k in keep)
        param.requires_grad = under_kept or bool(predicate and predicate(name, param))
