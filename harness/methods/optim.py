"""The optimizer every method gets unless it brings its own, and the parameters it does not decay:
shared by the training loop and by the methods that build their own optimizer (GaLore, LISA, SoRA)."""

from __future__ import annotations

import torch

# As transformers' Trainer: no weight decay on biases and normalisation weights.
NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def default_optimizer(
    params: list[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and normalisation weights (as transformers' Trainer)."""
    decay = [p for n, p in params if not n.endswith(NO_DECAY)]
    no_decay = [p for n, p in params if n.endswith(NO_DECAY)]
    groups = [
        g
        for g in ({"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0})
        if g["params"]
    ]
    return torch.optim.AdamW(groups, lr=lr)


def in_head(name: str, head_modules: tuple[str, ...]) -> bool:
    """Whether parameter or module `name` is, or lies inside, one of the task head's modules, matched
    as whole dotted name components: a head `classifier` also matches `model.classifier.dense` and
    peft's base_model.model.classifier.modules_to_save.default.dense.weight."""
    return any(name == h or name.startswith(h + ".") or f".{h}." in f".{name}." for h in head_modules)


def give_head_its_rate(
    optimizer: torch.optim.Optimizer,
    named: list[tuple[str, torch.nn.Parameter]],
    head_modules: tuple[str, ...],
    head_lr: float,
) -> torch.optim.Optimizer:
    """The optimizer with the head's parameters moved out of each group into a copy of that group at
    `head_lr` (its other settings kept: weight decay, a method's own keys). Done before the first
    step and before the schedule is built, so the schedule scales both rates alike. Whatever the
    method's optimizer (AdamW, GaLore's, SoRA's), the head then trains at the same rate."""
    head = {id(p) for n, p in named if in_head(n, head_modules)}
    if optimizer.state:
        raise RuntimeError("the head's rate is set before the optimizer's first step")
    moved = []
    for group in optimizer.param_groups:
        mine = [p for p in group["params"] if id(p) in head]
        if mine:
            group["params"] = [p for p in group["params"] if id(p) not in head]
            moved.append({**{k: v for k, v in group.items() if k != "params"}, "params": mine, "lr": head_lr})
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
    for group in moved:
        optimizer.add_param_group(group)
    return optimizer
