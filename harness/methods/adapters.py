"""Shared machinery for the adapter methods written by hand (SoRA, DyLoRA, NOLA).

peft does the wrapping for the peft-backed methods; these do it here, once: find the
target `nn.Linear` layers by name suffix (as peft does: "query" matches
"bert.encoder.layer.0.attention.self.query"), check the rank against each layer,
freeze everything but the task head, and swap each target for a wrapper whose base
layer stays frozen and whose adapter parameters train. Layers inside the task head are
never wrapped: the head trains in full anyway.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from harness.core.errors import HarnessError
from harness.measure.kernels import AdapterScope
from harness.methods.base import Method, MethodContext, freeze_all_but
from harness.methods.peft_family import (
    TargetedParams,
    check_rank,
    check_target_modules,
    default_lora_targets,
    linear_module_names,
)


class AdapterParams(TargetedParams):
    """Parameters every hand-written adapter has; subclasses add theirs and may change defaults.
    target_modules default: peft's per-architecture LoRA list (query, value for BERT/RoBERTa)."""

    r: int = Field(8, gt=0, description="rank of the update")
    alpha: float = Field(16, gt=0, description="scale numerator: the update is scaled by alpha / r")


def _under(name: str, heads: tuple[str, ...]) -> bool:
    return any(f".{h}." in f".{name}." for h in heads)


def default_targets(model: nn.Module, method: str) -> list[str]:
    """peft's per-architecture LoRA targets, so these methods adapt what `lora` adapts."""
    targets = default_lora_targets(model)
    if targets is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise HarnessError(
            f"method {method!r}: no default target modules for model type {model_type!r}; give target_modules=..."
        )
    return targets


def find_linears(
    model: nn.Module, targets: list[str], heads: tuple[str, ...], method: str
) -> list[tuple[str, nn.Linear]]:
    """(name, layer), in model order, for every `nn.Linear` outside the head whose name ends in a target."""
    check_target_modules(model, targets, method)

    def matches(name: str, target: str) -> bool:
        return name == target or name.endswith("." + target)

    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not _under(name, heads) and any(matches(name, t) for t in targets)
    ]
    for target in targets:  # a target that names only non-linear modules (or only head layers) is bad input too
        if not any(matches(name, target) for name, _ in found):
            raise HarnessError(
                f"method {method!r}: target module {target!r} matches no linear layer outside the task head; "
                f"linear layers: {', '.join(linear_module_names(model))}"
            )
    return found


class AdapterLinear(nn.Module):
    """A frozen `nn.Linear` plus a trained update: y = base(x) + delta(x)."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        weight = base.weight
        # New tensors live where the base weight does, in its dtype (float32 if it is not a float).
        self.factory = {"device": weight.device, "dtype": weight.dtype if weight.is_floating_point() else torch.float32}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.delta(x)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with the update folded into its weight. Every update here is a
        linear map of x without bias, so its matrix is delta applied to the identity."""
        was_training = self.training
        self.eval()  # the update inference uses (DyLoRA: its evaluation rank)
        identity = torch.eye(self.in_features, device=self.base.weight.device, dtype=self.base.weight.dtype)
        self.base.weight += self.delta(identity).T.to(self.base.weight.dtype)
        self.train(was_training)
        return self.base


def low_rank(
    x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scale: float, gate: torch.Tensor | None = None
) -> torch.Tensor:
    """scale * B diag(gate) A x, right to left, so the out x in update is never formed."""
    h = x @ A.T
    if gate is not None:
        h = h * gate
    return (h @ B.T) * scale


class LowRankLinear(AdapterLinear):
    """The LoRA update scale * B A with trained A (r x in, Kaiming-uniform as in LoRA) and
    B (out x r, zero), so the wrapped layer starts out equal to its base layer."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__(base)
        self.scale = alpha / r
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **self.factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **self.factory))

    @property
    def rank(self) -> int:
        return self.lora_A.shape[0]

    @torch.no_grad()
    def keep_ranks(self, index: torch.Tensor) -> None:
        """Keep only the rank components in `index` (rows of A, columns of B). The scale is
        left as it was, so the kept components contribute exactly what they did before."""
        self.lora_A = nn.Parameter(self.lora_A[index].clone())
        self.lora_B = nn.Parameter(self.lora_B[:, index].clone())


class AdapterMethod(Method):
    """Base for the hand-written adapter methods: wraps every target layer in `make_layer`'s module."""

    Params: ClassVar[type[AdapterParams]] = AdapterParams
    Layer: ClassVar[type[AdapterLinear]] = AdapterLinear

    def make_layer(self, base: nn.Linear, index: int, ctx: MethodContext) -> AdapterLinear:
        raise NotImplementedError

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        check_target_modules(model, self.params.target_modules, self.name)  # [] is refused, not the default
        targets = (
            self.params.target_modules if self.params.target_modules is not None else default_targets(model, self.name)
        )
        layers = find_linears(model, targets, tuple(ctx.head_modules), self.name)
        check_rank(layers, self.params.r, self.name)
        freeze_all_but(model, keep=ctx.head_modules)  # before wrapping: the new adapter parameters stay trainable
        for index, (name, linear) in enumerate(layers):
            model.set_submodule(name, self.make_layer(linear, index, ctx))
        return model

    def merge(self, model: nn.Module) -> nn.Module:
        for name, layer in self.layers(model):
            model.set_submodule(name, layer.merged())
        return model

    def layers(self, model: nn.Module) -> list[tuple[str, AdapterLinear]]:
        return [(name, m) for name, m in model.named_modules() if isinstance(m, self.Layer)]

    def adapter_scopes(self, model: nn.Module) -> list[AdapterScope]:
        """Each wrapper minus its frozen base layer (A, B, gates and coefficients are bare
        parameters, with no sub-modules to hook: the wrapper's forward is the scope)."""
        return [AdapterScope(layer, (layer.base,)) for _, layer in self.layers(model)]
