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
