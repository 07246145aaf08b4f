"""One thin adapter from a peft config to a harness method.

A peft-backed method only says how to build its `PeftConfig`; wrapping, the checks on
target modules and merging live here once for all of them.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch

from harness.core.errors import HarnessError, first_line
from harness.methods.base import Method, MethodContext


def linear_module_names(model: torch.nn.Module) -> list[str]:
    return sorted({name.split(".")[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def check_target_modules(model: torch.nn.Module, targets: list[str] | None, method: str) -> None:
    """An unknown target module is bad input: name the closest existing ones. An empty list
    adapts nothing (and would silently fall back to the defaults): bad input too."""
    if targets is None:
        return
    if not targets:
        raise HarnessError(
            f"method {method!r}: target_modules=[] names no module; leave target_modules out for the default, "
            f"or name some (linear layers: {', '.join(linear_module_names(model))})"
        )
    names = [name for name, _ in model.named_modules() if name]
    suffixes = sorted({n.split(".")[-1] for n in names})
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            close = difflib.get_close_matches(target, suffixes, n=3, cutoff=0.5)
            hint = (
                f"did you mean {', '.join(close)}?"
                if close
                else f"linear layers: {', '.join(linear_module_names(model))}"
            )
            raise HarnessError(f"method {method!r}: target module {target!r} is not in the model; {hint}")


# Architectures peft has no default for (peft 0.21 lists none for ViT/DeiT): the attention's query
# and value projections, as the LoRA paper adapts (Hu et al. 2022, sec. 7.1), under either
# transformers naming (4.x: query/value; 5.x: q_proj/v_proj), whichever the model has.
_QUERY_VALUE = (("query", "value"), ("q_proj", "v_proj"))
EXTRA_LORA_TARGETS: dict[str, tuple[tuple[str, ...], ...]] = {"vit": _QUERY_VALUE, "deit": _QUERY_VALUE}


def default_lora_targets(model: torch.nn.Module) -> list[str] | None:
    """peft's per-architecture LoRA targets (query and value for BERT/RoBERTa), or None."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if targets:
        return list(targets)
    names = {name.split(".")[-1] for name, _ in model.named_modules()}
    return next((list(t) for t in EXTRA_LORA_TARGETS.get(model_type, ()) if set(t) <= names), None)


def check_rank(layers: list[tuple[str, torch.nn.Linear]], rank: int, method: str) -> None:
    """A rank above min(in, out) of an adapted linear layer adds nothing but cost: bad input."""
    for name, layer in layers:
        limit = min(layer.in_features, layer.out_features)
        if rank > limit:
            raise HarnessError(
                f"method {method!r}: rank {rank} exceeds layer {name!r} ({layer.in_features}x{layer.out_features}, at most {limit})"
            )


def peft_adapted_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """(name, base layer) of every linear layer that peft wrapped."""
    found = []
    for name, module in model.named_modules():
        if hasattr(module, "base_layer") and hasattr(module, "get_base_layer"):
            base = module.get_base_layer()
            if isinstance(base, torch.nn.Linear) and base is not module:
                found.append((name, base))
    return found


class PeftMethod(Method):
    """Base for methods that peft implements: subclasses return their `PeftConfig`.

    `rank_param` names the parameter that is a rank bounded by the adapted layers' size.
    A method that peft can merge into the weights has a `merge` parameter.
    `prepare` runs on the bare model before wrapping (CorDA, LoRA-GA read activations or
    gradients there); `initialise` on the wrapped model (EVA's data-driven init).
    """

    rank_param: str | None = None

    def peft_config(self, ctx: MethodContext, model: torch.nn.Module):
        raise NotImplementedError

    def prepare(self, model: torch.nn.Module, config, ctx: MethodContext) -> None:
        pass

    def initialise(self, model: torch.nn.Module, ctx: MethodContext) -> None:
        pass

    def common_kwargs(self, ctx: MethodContext) -> dict[str, Any]:
        return {"task_type": ctx.peft_task_type}

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        from peft import get_peft_model

        check_target_modules(model, getattr(self.params, "target_modules", None), self.name)
        config = self.peft_config(ctx, model)
        if ctx.peft_task_type is None and ctx.head_modules:
            config.modules_to_save = list(ctx.head_modules)
        self.prepare(model, config, ctx)
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as exc:  # peft's own checks on the config against this model
            raise HarnessError(f"method {self.name!r}: {first_line(exc)}") from None
        if self.rank_param:
            check_rank(peft_adapted_linears(wrapped), getattr(self.params, self.rank_param), self.name)
        self.initialise(wrapped, ctx)
        return wrapped

    def finalize(self, model: torch.nn.Module) -> torch.nn.Module:
        if getattr(self.params, "merge", False):
            return model.merge_and_unload()
        return model

    @property
    def can_merge(self) -> bool:
        # A method that peft can merge offers the `merge` parameter; the others do not.
        return "merge" in self.Params.model_fields

    def merge(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import PeftModel

        if isinstance(model, PeftModel):  # not yet merged by finalize (merge=false, the default)
            return model.merge_and_unload()
        return model
