"""The evaluation-backend contract: what runs the final model for its scores and inference costs.

A backend is a subclass of `ForwardBackend` or `GenerateBackend` registered by name in
`EVAL_BACKENDS`. A suite names the kind it needs (`Suite.eval_kind`); `choose` gives a run the
backend it asks for, else the first available one of that kind in preference order (`preference`,
highest first), so a faster engine is used where it can run and the harness's own path elsewhere.
The shape follows lm-eval's `LM` (one call per kind of request, the model behind it its own
business) and optimum-benchmark's `Backend` (a name, a forward and a generate call, checks of what
the machine has): small, and only what the suites call.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from harness.core.errors import HarnessError
from harness.core.registry import Registry, summary_of

EVAL_BACKENDS: Registry[type["EvalBackend"]] = Registry(
    "eval backend", package="harness.evaluation", name_attribute="name"
)

# What a backend evaluates, by kind.
KINDS = {
    "forward": "forward passes over batches of a classification or regression model, scored by the suite",
    "generate": "lm-eval tasks (generation, multiple choice, perplexity) on a causal language model",
}


class EvalBackend:
    name: ClassVar[str] = ""  # set by EVAL_BACKENDS.register
    kind: ClassVar[str] = ""
    # Order of the automatic choice among the available backends of a kind: highest first.
    preference: ClassVar[int] = 0
    # The harness's own path of its kind: the job identity leaves it out, so that runs made
    # before backends existed keep their hashes; any other backend enters the identity.
    current: ClassVar[bool] = False

    @classmethod
    def unavailable(cls, device_type: str) -> str | None:
        """Why this backend cannot run on a device of this type ("cpu", "cuda"), or None. Cheap:
        nothing is imported or started."""
        return None

    @classmethod
    def summary(cls) -> str:
        return summary_of(cls)


class ForwardBackend(EvalBackend):
    """Scores of a classification or regression model: predictions over batches, forward latency."""

    kind = "forward"

    def predict(
        self,
        model: torch.nn.Module,
        data,
        predictions_of: Callable[[Any], list],
        *,
        batch_size: int,
        precision: str,
        device: torch.device,
        label: str = "eval",
        show_progress: bool = True,
    ) -> tuple[list, float]:
        """Predictions over a prepared split (`predictions_of` turns a batch's outputs into them), in
        order, and the seconds it took."""
        raise NotImplementedError

    def costs(self, model: torch.nn.Module, data, run, device: torch.device) -> dict[str, Any]:
        """Inference-cost columns of the row (latency, FLOPs) on the prepared evaluation inputs."""
        raise NotImplementedError


class GenerateBackend(EvalBackend):
    """lm-eval tasks: each task's own prompts, stop sequences, answer extraction and metrics."""

    kind = "generate"

    def evaluate(
        self,
        model: torch.nn.Module,
        tokenizer,
        tasks,
        *,
        num_fewshot: int,
        limit: int | None,
        batch_size: int,
        max_new_tokens: int,
        max_length: int | None = None,
        show_progress: bool = True,
    ):
        """lm-eval's scores of `model` as the method left it on `tasks` (harness.evaluation.lm_eval_tasks
        .LmEvalTasks): a harness.evaluation.lm_eval.LmEvalResult."""
        raise NotImplementedError

    def costs(self, model: torch.nn.Module, tokenizer, data, run, device: torch.device) -> dict[str, Any]:
        """Inference-cost columns of the row (prefill latency, time to first token, throughput);
        `data.references` holds the evaluation prompts."""
        raise NotImplementedError


def of_kind(kind: str) -> list[type[EvalBackend]]:
    """The registered backends of a kind, in the order the automatic choice tries them."""
    if kind not in KINDS:
        raise ValueError(f"unknown evaluation kind {kind!r}; kinds: {', '.join(KINDS)}")
    found = [backend for _, backend in EVAL_BACKENDS if backend.kind == kind]
    return sorted(found, key=lambda b: (-b.preference, b.name))


def current(kind: str) -> type[EvalBackend]:
    """The harness's own backend of a kind."""
    (backend,) = [b for b in of_kind(kind) if b.current]
    return backend


def choose(kind: str, requested: str | None, device_type: str) -> type[EvalBackend]:
    """The backend a run gets: the one it names, which must be of `kind` and able to run here, else
    the first available one of `kind` in preference order. Bad input is one line."""
    if requested is not None:
        if requested not in EVAL_BACKENDS:
            known = ", ".join(b.name for b in of_kind(kind))
            raise HarnessError(f"eval_backend={requested!r} is not an evaluation backend; for this suite: {known}")
        backend = EVAL_BACKENDS.get(requested)
        if backend.kind != kind:
            known = ", ".join(b.name for b in of_kind(kind))
            raise HarnessError(
                f"eval_backend={requested!r} evaluates {KINDS[backend.kind]}; this suite needs {KINDS[kind]}: {known}"
            )
        reason = backend.unavailable(device_type)
        if reason:
            raise HarnessError(f"eval_backend={requested!r} cannot run here: {reason}")
        return backend
    for backend in of_kind(kind):
        if backend.unavailable(device_type) is None:
            return backend
    reasons = "; ".join(f"{b.name}: {b.unavailable(device_type)}" for b in of_kind(kind))
    raise HarnessError(f"no evaluation backend for {KINDS[kind]} can run on {device_type} ({reasons})")
