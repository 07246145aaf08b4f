"""SoRA (Ding et al., Sparse Low-rank Adaptation of Pre-trained Language Models, EMNLP 2023).

A LoRA update with a gate on the rank dimension, scale * B diag(g) A x, trained at an
initial rank r_max. After every optimizer step the gate takes a proximal step for an
L1 penalty, the soft threshold g <- sign(g) * max(|g| - xi, 0), which drives unneeded
ranks to exactly zero; `finalize` then drops them, leaving a smaller LoRA with the
same outputs.

Defaults follow the official code (github.com/TsinghuaC3I/SoRA): r_max = 8, alpha = 16,
gate initialised N(0, 1), A Kaiming-uniform and B zero (so the model starts unchanged),
and the threshold xi (`sparse_lambda_2` there, the paper's eta_t * lambda) = 1e-3, that
code's default; its GLUE scripts use 3e-4. As in that code, xi is applied as given each
step rather than multiplied by the current learning rate, which the hook does not see.
Simplifications: the code's extra L1 term in the loss (`sparse_lambda`) and its separate
gate optimizer (AdamW without weight decay) are left out; here the gate trains in the
loop's AdamW with the other adapter parameters.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from harness.adapters import AdapterMethod, AdapterParams, LowRankLinear, low_rank
from harness.method import METHODS


class SoraParams(AdapterParams):
    r: int = Field(8, gt=0, description="initial (maximum) rank r_max")
    sparsity_lambda: float = Field(1e-3, ge=0, description="soft threshold on the gate after each step (official code: sparse_lambda_2)")


class SoraLinear(LowRankLinear):
    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__(base, r, alpha)
        self.gate = nn.Parameter(torch.randn(r, **self.factory))

    def delta(self, x):
        return low_rank(x, self.lora_A, self.lora_B, self.scale, self.gate)

    @torch.no_grad()
    def keep_ranks(self, index):
        super().keep_ranks(index)
        self.gate = nn.Parameter(self.gate[index].clone())


@METHODS.register("sora")
class SoRA(AdapterMethod):
    """SoRA: LoRA with an L1-sparsified gate on the rank; zeroed ranks are removed after training."""

    name = "sora"
    category = "low-rank, adaptive rank"
    paper = "Ding et al., Sparse Low-rank Adaptation of Pre-trained Language Models, EMNLP 2023"
    Params = SoraParams
    Layer = SoraLinear
    default_lr = 8e-4  # the official GLUE scripts (DeBERTaV3-base)

    def make_layer(self, base, index, ctx):
        return SoraLinear(base, self.params.r, self.params.alpha)

    @torch.no_grad()
    def on_step(self, step, model):
        xi = self.params.sparsity_lambda
        for _, layer in self.layers(model):
            g = layer.gate
            g.copy_(g.sign() * (g.abs() - xi).clamp(min=0))

    @torch.no_grad()
    def finalize(self, model):
        for name, layer in self.layers(model):
            keep = layer.gate.nonzero().flatten()
            if len(keep) == 0:  # every rank pruned: the layer is its base layer again
                model.set_submodule(name, layer.base)
            elif len(keep) < layer.rank:
                layer.keep_ranks(keep)
        return model
