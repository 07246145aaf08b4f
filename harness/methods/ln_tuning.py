"""LN tuning (Qi et al., 2022) through peft: train only the LayerNorm weights and biases."""

from __future__ import annotations

import torch

from harness.methods.base import METHODS
from harness.methods.peft_family import PeftMethod, TargetedParams


def is_norm(module: torch.nn.Module) -> bool:
    # Llama-style models use their own RMSNorm classes (LlamaRMSNorm), not torch's.
    return isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm)) or type(module).__name__.endswith(
        ("LayerNorm", "RMSNorm")
    )


def layer_norm_names(model: torch.nn.Module) -> list[str]:
    return sorted({name.split(".")[-1] for name, m in model.named_modules() if name and is_norm(m)})


@METHODS.register("ln-tuning")
class LNTuning(PeftMethod):
    """LN tuning: train only the LayerNorm gains and biases (plus the task head) (peft)."""

    category = "selective"
    paper = "Qi et al., Parameter-Efficient Tuning on Layer Normalization for Pre-trained Language Models, arXiv 2022"
    Params = TargetedParams
    default_lr = 1e-2
    default_lr_source = "Qi et al. 2022 (LN tuning), GLUE hyperparameters: LN-tuning learning rates of 1e-2 and above"
    config_class = "LNTuningConfig"

    def target_modules(self, model):
        return self.params.target_modules or layer_norm_names(model)  # default: every LayerNorm (or RMSNorm)
