"""One thin adapter from a peft config to a harness method.

A peft-backed method only says how to build its `PeftConfig`, mostly as a table (which peft
class, which of its arguments come from which parameter); wrapping, the checks on target
modules, merging and the adapter scopes the kernel profile times live here once for all.
"""

from __future__ import annotations

import difflib
from typing import Any, ClassVar

import torch
from pydantic import Field

from harness.core.errors import HarnessError, first_line
from harness.measure.kernels import AdapterScope
from harness.methods.base import Method, MethodContext, MethodParams


class TargetedParams(MethodParams):
    """Parameters of a method that adapts named modules. `target_modules=[]` would adapt nothing
    (peft then silently falls back to its defaults): `check_target_modules` refuses it once the
    model is known, naming its linear layers."""

    target_modules: list[str] | None = Field(
        None, description="module names, matched as suffixes (as peft does); default: the method's own choice"
    )


class MergeableParams(TargetedParams):
    """A method whose trained update can be folded into the weights (peft's `merge_and_unload`)."""

    merge: bool = Field(
        False, description="merge the update into the weights after training (measured inference then has no adapter)"
    )


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


def peft_args(*same: str, **renamed: str) -> dict[str, str]:
    """A `config_fields` table: peft arguments named like the parameter, then peft argument=parameter."""
    return {**{name: name for name in same}, **renamed}


def tuner_layer_scopes(model: torch.nn.Module) -> list[AdapterScope]:
    """peft's tuner layers (`BaseTunerLayer`: LoRA/DoRA, AdaLoRA, IA3, VeRA, LoHa/LoKr, OFT/BOFT,
    ...), each minus its `base_layer`, the model's own work. LN tuning's trained LayerNorm copy
    (`ln_tuning_layers`) replaces the base layer, so it is excluded too: that method adds no work.

    Whole tuner layers rather than only their branch sub-modules (`lora_A`, `lora_B`): the
    wrapper's own ops (`* scaling`, `result + ...`, dropout, casts) are adapter cost too, and
    most tuners (IA3, VeRA, LoHa/LoKr) have no branch sub-modules to hook."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    scopes = []
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            exclude = [m for m in (getattr(module, "base_layer", None),) if isinstance(m, torch.nn.Module)]
            ln_copies = getattr(module, "ln_tuning_layers", None)
            if isinstance(ln_copies, torch.nn.Module):
                exclude.append(ln_copies)
            scopes.append(AdapterScope(module, tuple(exclude)))
    return scopes


class PeftMethod(Method):
    """Base for methods that peft implements.

    The `PeftConfig` is `config_class` (a class name in `peft`) called with `config_fields`
    (peft argument -> parameter name), the targets (`target_modules`, for `TargetedParams`),
    `extra_config` (what depends on the context or the model) and the task type.
    `rank_param` names the parameter that is a rank bounded by the adapted layers' size.
    A method that peft can merge into the weights has a `merge` parameter (`MergeableParams`).
    `prepare` runs on the bare model before wrapping (CorDA, LoRA-GA read activations or
    gradients there); `initialise` on the wrapped model (EVA's data-driven init).
    """

    rank_param: str | None = None
    config_class: ClassVar[str] = ""
    config_fields: ClassVar[dict[str, str]] = {}

    def extra_config(self, ctx: MethodContext, model: torch.nn.Module) -> dict[str, Any]:
        return {}

    def target_modules(self, model: torch.nn.Module) -> list[str] | None:
        """The targets handed to peft: the given ones (None: peft's per-architecture default)."""
        return self.params.target_modules

    def peft_config(self, ctx: MethodContext, model: torch.nn.Module):
        import peft

        p = self.params
        kwargs = {argument: getattr(p, param) for argument, param in self.config_fields.items()}
        if isinstance(p, TargetedParams):
            kwargs["target_modules"] = self.target_modules(model)
        return getattr(peft, self.config_class)(**kwargs, **self.extra_config(ctx, model), **self.common_kwargs(ctx))

    def prepare(self, model: torch.nn.Module, config, ctx: MethodContext) -> None:
        pass

    def initialise(self, model: torch.nn.Module, ctx: MethodContext) -> None:
        pass

    def common_kwargs(self, ctx: MethodContext) -> dict[str, Any]:
        return {"task_type": ctx.peft_task_type}

    def apply(self, model: torch.nn.Module, ctx: MethodContext) -> torch.nn.Module:
        from peft import get_peft_model

        if isinstance(self.params, TargetedParams):
            check_target_modules(model, self.params.target_modules, self.name)
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

    def adapter_scopes(self, model: torch.nn.Module) -> list[AdapterScope]:
        return tuner_layer_scopes(model)
