"""LN tuning (Qi et al., 2022) through peft: train only the LayerNorm weights and biases."""

from __future__ import annotations

import torch
from pydantic import Field

from harness.methods.base import METHODS, MethodParams
from harness.methods.peft_family import PeftMethod


class LNTuningParams(MethodParams):
    target_modules: list[str] | None = Field(None, description="default: every LayerNorm (or RMSNorm) of the model")


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

    name = "ln-tuning"
    category = "selective"
    paper = "Qi et al., Parameter-Efficient Tuning on Layer Normalization for Pre-trained Language Models, arXiv 2022"
    Params = LNTuningParams
    default_lr = 1e-2  # the paper's LN-tuning rates are 1e-2 and above

    def peft_config(self, ctx, model):
        from peft import LNTuningConfig

        return LNTuningConfig(
            target_modules=self.params.target_modules or layer_norm_names(model), **self.common_kwargs(ctx)
        )
