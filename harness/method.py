"""The method contract: a small object with optional hooks.

A method (adaptation or compression) is a subclass of `Method` registered by name in
`METHODS`. Its parameters are a pydantic model (`Params`) whose defaults come from the
method's paper; a wrong name or value is a `HarnessError`. The training loop calls the
hooks in this order:

    model = apply(model, ctx)            wrap, freeze, quantize, prune
    opt   = optimizer(trainable, ctx)    None -> the loop's AdamW
    each step: backward, optimizer.step(), on_step(step, model), zero_grad()
    model = finalize(model)              merge, prune ranks, export

`on_step` runs while gradients are still present (AdaLoRA's rank allocation needs them).
Several methods compose into a `Pipeline`, applied left to right. Compression steps
(`compresses = True`) before the last adaptation step run before training (`wanda+lora`:
prune, then recover); those after it run on the trained model once the adaptation is
merged into its weights (`lora+int8`: adapt, merge, then quantize).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from harness.errors import HarnessError
from harness.meters import Stopwatch, count_parameters, device_of, model_bytes
from harness.methodspec import MethodStep, parse_pipeline
from harness.registry import Registry, summary_of

METHODS: Registry[type["Method"]] = Registry("method", package="methods", entry_point_group="harness.methods")


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MethodParams(BaseModel):
    """Base for method parameters: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class MethodContext:
    """What a method may need to know about the job it is applied in."""

    task_type: str  # "seq_cls" (sequence classification / regression), "causal_lm" or "image_cls"
    head_modules: tuple[str, ...] = ()  # freshly initialised task head: always trained
    dense_modules: tuple[str, ...] = ()  # pretrained, but left out of compression (a causal LM's lm_head)
    total_steps: int = 0
    lr: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
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
        """Pipeline steps in order: later steps describe the final weights; simulated wins over real."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        last = lambda attr: next((getattr(p, attr) for p in reversed(parts) if getattr(p, attr) is not None), None)  # noqa: E731
        kernels = {p.kernel for p in parts}
        kernel = "simulated" if "simulated" in kernels else "real" if "real" in kernels else None
        return Compression(last("weight_bits"), kernel, last("compressed_bytes"))


class Method:
    """Base class; subclasses set the class attributes and override the hooks they need."""

    name: ClassVar[str] = ""
    category: ClassVar[str] = ""  # e.g. "full", "selective", "low-rank", "scaling", "quantization"
    # Compression steps change the model rather than choose what trains. In a pipeline a
    # compression step before the last adaptation step runs before training (prune, then
    # recover); one after it runs on the trained, merged model (adapt, merge, then quantize).
    compresses: ClassVar[bool] = False
    paper: ClassVar[str] = ""  # short citation: authors, title, venue year
    Params: ClassVar[type[BaseModel]] = NoParams
    # Default learning rate when the user gives none: the paper's value for GLUE-size encoders.
    default_lr: ClassVar[float] = 5e-4

    def __init__(self, params: BaseModel | None = None):
        self.params = params if params is not None else self.Params()

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


@dataclass(frozen=True)
class StepCost:
    """What one pipeline step cost, and the model it left behind."""

    step: str  # a method's canonical spec, "train", or "merge"
    phase: str  # "before training", "training" or "after training"
    compresses: bool  # a compression step, or the merge that prepares one
    seconds: float
    trainable_params: int
    total_params: int
    model_bytes: int


class Pipeline:
    """Methods applied in order; the hooks of each run in turn.

    The steps up to the last adaptation step run before training; compression steps after
    it run in `finalize`, on the trained model with its adaptation merged into the weights.
    Every step's wall time and the model it leaves are logged in `costs`.
    """

    def __init__(self, methods: list[Method]):
        if not methods:
            raise HarnessError("empty method pipeline")
        self.methods = methods
        adapting = [i for i, m in enumerate(methods) if not m.compresses]
        # With no adaptation step at all, compression runs before the (empty) training.
        self.split = adapting[-1] + 1 if adapting else len(methods)
        self._check_order(adapting)
        self.costs: list[StepCost] = []
        self._ctx: MethodContext | None = None

    def _check_order(self, adapting: list[int]) -> None:
        for i, method in enumerate(self.methods[: self.split]):
            if method.compresses and adapting and adapting[0] < i:
                before, after = self.methods[adapting[0]].name, self.methods[adapting[-1]].name
                raise HarnessError(
                    f"method pipeline {self.name!r}: compression step {method.name!r} sits between adaptation steps "
                    f"{before!r} and {after!r}; put it first ({method.name}+{after}: compress, then recover) or last "
                    f"({after}+{method.name}: adapt, merge, then compress)"
                )
        if self.after:
            for method in self.before:
                if not method.compresses and not method.can_merge:
                    raise HarnessError(
                        f"method pipeline {self.name!r}: {method.name!r} cannot be merged into the weights, so "
                        f"{self.after[0].name!r} cannot compress the adapted model; put the compression first "
                        f"({self.after[0].name}+{method.name})"
                    )

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        return cls([METHODS.get(step.name).from_step(step) for step in parse_pipeline(text)])

    @property
    def before(self) -> list[Method]:
        return self.methods[: self.split]

    @property
    def after(self) -> list[Method]:
        return self.methods[self.split :]

    def spec(self) -> str:
        return "+".join(m.spec() for m in self.methods)

    @property
    def name(self) -> str:
        return "+".join(m.name for m in self.methods)

    @property
    def default_lr(self) -> float:
        # The step being trained is the last adaptation step: its rate.
        trained = [m for m in self.methods if not m.compresses] or self.methods
        return trained[-1].default_lr

    def resolved_params(self) -> list[dict[str, Any]]:
        return [{"method": m.name, "params": m.resolved_params()} for m in self.methods]

    def record(self, step: str, phase: str, compresses: bool, seconds: float, model: torch.nn.Module) -> None:
        trainable, total = count_parameters(model)
        self.costs.append(StepCost(step, phase, compresses, seconds, trainable, total, model_bytes(model)))

    def _timed(self, step: str, phase: str, compresses: bool, model: torch.nn.Module,
               work: Callable[[torch.nn.Module], torch.nn.Module]) -> torch.nn.Module:
        with Stopwatch(device_of(model)) as watch:
            model = work(model)
        self.record(step, phase, compresses, watch.seconds, model)
        return model

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        self._ctx = ctx
        for method in self.before:
            model = self._timed(method.spec(), "before training", method.compresses, model, lambda m: method.apply(m, ctx))
        for method in self.after:
            method.preflight(model, ctx)
        return model

    def optimizer(self, params: list[torch.nn.Parameter], ctx: MethodContext) -> torch.optim.Optimizer | None:
        made = [(m.name, opt) for m in self.before if (opt := m.optimizer(params, ctx)) is not None]
        if len(made) > 1:
            raise HarnessError(f"methods {', '.join(n for n, _ in made)} each bring an optimizer; a pipeline may have one")
        return made[0][1] if made else None

    def on_step(self, step: int, model: torch.nn.Module) -> None:
        for method in self.before:
            method.on_step(step, model)

    def finalize(self, model: torch.nn.Module) -> torch.nn.Module:
        for method in self.before:
            model = method.finalize(model)
        if not self.after:
            return model

        def merge_all(m: torch.nn.Module) -> torch.nn.Module:
            for method in reversed(self.before):  # the outermost wrapping first
                m = method.merge(m)
            return m

        model = self._timed("merge", "after training", True, model, merge_all)
        ctx = self._ctx  # set by apply, which always comes first
        for method in self.after:
            model = self._timed(method.spec(), "after training", True, model, lambda m: method.finalize(method.apply(m, ctx)))
        return model

    def compression(self, model: torch.nn.Module) -> Compression | None:
        return Compression.combine([m.compression(model) for m in self.methods])


def freeze_all_but(model: torch.nn.Module, keep: Iterable[str] = (), predicate=None) -> None:
    """Freeze every parameter except those under a module named in `keep` or matching `predicate(name, param)`."""
    keep = tuple(keep)
    for name, param in model.named_parameters():
        under_kept = any(name == k or name.startswith(k + ".") or f".{k}." in f".{name}" for k in keep)
        param.requires_grad = under_kept or bool(predicate and predicate(name, param))
