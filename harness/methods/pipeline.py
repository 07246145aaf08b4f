"""Several methods applied in order as one: a `Pipeline`, and what each step cost.

Compression steps (`compresses = True`) before the last adaptation step run before training
(`wanda+lora`: prune, then recover); those after it run on the trained model once the
adaptation is merged into its weights (`lora+int8`: adapt, merge, then quantize).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from harness.core.errors import HarnessError
from harness.measure.kernels import AdapterScope
from harness.measure.size import count_parameters, model_bytes
from harness.measure.timing import Stopwatch, device_of
from harness.methods.base import METHODS, Compression, Method, MethodContext
from harness.spec.method_spec import parse_pipeline


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
    notes: dict[str, Any] = field(default_factory=dict)  # the step's own facts (Method.notes)


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
        self.adapts = bool(adapting)
        self._check_formats()
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

    def _check_formats(self) -> None:
        """Refuse, before anything loads, pipelines whose later steps would break what an earlier
        one made: a method given twice, a step after one that must be last, training or merging
        into weights a quantizer put on its grid."""
        names = [m.name for m in self.methods]
        twice = next((n for n in names if names.count(n) > 1), None)
        if twice is not None:
            raise HarnessError(
                f"method pipeline {self.name!r}: {twice!r} is given {names.count(twice)} times; give each method once, "
                f"with all its parameters in one step (e.g. {twice}:a=1,b=2)"
            )
        for method in self.methods[:-1]:
            if method.must_be_last:
                rest = "+".join(m.name for m in self.methods if m is not method)
                raise HarnessError(
                    f"method pipeline {self.name!r}: {method.name!r} must be the last step (no later step can train or "
                    f"compress its quantized modules); put it last ({rest}+{method.name})"
                )
        for i, method in enumerate(self.before):
            if not method.quantizes:
                continue
            for later in self.before[i + 1 :]:
                if later.trains_base_weights:
                    raise HarnessError(
                        f"method pipeline {self.name!r}: {later.name!r} trains the weights {method.name!r} quantized, "
                        f"moving them off its grid; put the quantizer last ({later.name}+{method.name}: train, then quantize)"
                    )
                if later.merges_into_weights and not method.can_requantize:
                    raise HarnessError(
                        f"method pipeline {self.name!r}: {later.name!r} with merge=true folds its update into the weights "
                        f"{method.name!r} quantized, and {method.name!r} cannot quantize them again; keep the adapter "
                        f"(merge=false) or quantize after training ({later.name}+{method.name})"
                    )

    def check_context(self, ctx: MethodContext) -> None:
        """Refuse, before any step applies, what this job's setup makes unworkable."""
        if ctx.gradient_checkpointing and self.adapts:
            for method in self.before:
                if not method.supports_gradient_checkpointing:
                    raise HarnessError(
                        f"method {method.name!r} cannot train under --gradient-checkpointing (its forward keeps state "
                        f"that recomputation does not replay); drop --gradient-checkpointing, or apply it after training "
                        f"(e.g. lora+{method.name})"
                    )
        trains = any(m.trains for m in self.methods if not m.compresses)
        if not trains and ctx.fresh_head and ctx.head_modules:
            what = "only compresses" if not self.adapts else "trains nothing"
            raise HarnessError(
                f"method pipeline {self.name!r} {what}, and the task head ({', '.join(ctx.head_modules)}) is "
                f"freshly initialised: nothing would train it, so the score would be chance; add a step that trains it "
                f"({self.name}+linear-probe, or {self.name}+lora)"
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
    def _trained_step(self) -> Method:
        # The step being trained is the last adaptation step (the last step when none adapts).
        trained = [m for m in self.methods if not m.compresses] or self.methods
        return trained[-1]

    @property
    def default_lr(self) -> float:
        return self._trained_step.default_lr

    @property
    def default_lr_source(self) -> str:
        """Where `default_lr` comes from: the source of the step whose rate it is."""
        return self._trained_step.default_lr_source

    def resolved_params(self) -> list[dict[str, Any]]:
        return [{"method": m.name, "params": m.resolved_params()} for m in self.methods]

    def record(
        self,
        step: str,
        phase: str,
        compresses: bool,
        seconds: float,
        model: torch.nn.Module,
        notes: dict[str, Any] | None = None,
    ) -> None:
        trainable, total = count_parameters(model)
        self.costs.append(
            StepCost(
                step,
                phase,
                compresses,
                seconds,
                trainable,
                total,
                model_bytes(model),
                notes if notes is not None else {},
            )
        )

    def _timed(
        self,
        step: str,
        phase: str,
        compresses: bool,
        model: torch.nn.Module,
        work: Callable[[torch.nn.Module], torch.nn.Module],
        notes: dict[str, Any] | None = None,
    ) -> torch.nn.Module:
        with Stopwatch(device_of(model)) as watch:
            model = work(model)
        self.record(step, phase, compresses, watch.seconds, model, notes)
        return model

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        self.check_context(ctx)
        self._ctx = ctx
        for method in self.before:
            model = self._timed(
                method.spec(), "before training", method.compresses, model, lambda m: method.apply(m, ctx), method.notes
            )
        for method in self.after:
            method.preflight(model, ctx)
        return model

    def optimizer(self, params: list[torch.nn.Parameter], ctx: MethodContext) -> torch.optim.Optimizer | None:
        made = [(m.name, opt) for m in self.before if (opt := m.optimizer(params, ctx)) is not None]
        if len(made) > 1:
            raise HarnessError(
                f"methods {', '.join(n for n, _ in made)} each bring an optimizer; a pipeline may have one"
            )
        return made[0][1] if made else None

    def on_step(self, step: int, model: torch.nn.Module) -> None:
        for method in self.before:
            method.on_step(step, model)

    def extra_loss(self, model: torch.nn.Module) -> torch.Tensor | None:
        terms = [t for m in self.before if (t := m.extra_loss(model)) is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def finalize(self, model: torch.nn.Module) -> torch.nn.Module:
        for method in self.before:
            model = method.finalize(model)
        for i, method in enumerate(self.before):
            # A merged adapter moved a quantizer's weights off its grid: quantize them again, so
            # the reported format is the one the final weights have.
            if method.quantizes and any(later.merges_into_weights for later in self.before[i + 1 :]):
                model = self._timed(f"{method.spec()} (again)", "after training", True, model, method.requantize)
        if not self.after:
            return model

        def merge_all(m: torch.nn.Module) -> torch.nn.Module:
            for method in reversed(self.before):  # the outermost wrapping first
                m = method.merge(m)
            return m

        model = self._timed("merge", "after training", True, model, merge_all)
        ctx = self._ctx  # set by apply, which always comes first
        for method in self.after:
            model = self._timed(
                method.spec(),
                "after training",
                True,
                model,
                lambda m: method.finalize(method.apply(m, ctx)),
                method.notes,
            )
        return model

    def compression(self, model: torch.nn.Module) -> Compression | None:
        return Compression.combine([m.compression(model) for m in self.methods])

    def adapter_scopes(self, model: torch.nn.Module) -> list[AdapterScope]:
        """Every step's adapter scopes in `model`, each module once, in the model's module order
        (outermost first)."""
        scopes: dict[int, AdapterScope] = {}
        for method in self.methods:
            for scope in method.adapter_scopes(model):
                scopes.setdefault(id(scope.module), scope)
        order = {id(module): i for i, module in enumerate(model.modules())}
        return sorted(scopes.values(), key=lambda scope: order.get(id(scope.module), len(order)))
