"""DyLoRA (Valipour et al., DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using
Dynamic Search-Free Low-Rank Adaptation, EACL 2023).

A LoRA update trained for every rank 1..r at once: each training step samples one rank
b uniformly from [1, r] (seeded, shared by all layers) and the forward uses only the
first b components, (alpha / b) * B[:, :b] A[:b, :] x, which orders the components by
importance. Any rank then works at inference: `eval_rank` (default r) picks it, and
`finalize` truncates the adapter to it so the exported adapter has that rank.

Defaults: r = 8 (the paper trains GLUE adapters for ranks 1..8) and the paper's alpha / b
scaling; alpha = 16 and the learning rate are the harness's LoRA values, not checked
against the paper. The paper's "frozen" variant (train only component b) is not built.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from harness.methods.adapters import AdapterMethod, AdapterParams, LowRankLinear, low_rank
from harness.methods.base import METHODS
from harness.methods.lora import LORA_LR_SOURCE


class DyLoraParams(AdapterParams):
    r: int = Field(8, gt=0, description="maximum rank; training samples ranks 1..r")
    eval_rank: int | None = Field(
        None, gt=0, description="rank used at inference (default r); finalize truncates to it"
    )

    @model_validator(mode="after")
    def _check(self):
        if self.eval_rank is not None and self.eval_rank > self.r:
            raise ValueError(f"eval_rank ({self.eval_rank}) must not exceed r ({self.r})")
        return self


class DyLoraLinear(LowRankLinear):
    def __init__(self, base: nn.Linear, r: int, alpha: float, eval_rank: int):
        super().__init__(base, r, alpha)
        self.alpha = alpha
        self.train_rank = r  # set each step by the method
        self.eval_rank = eval_rank

    def delta(self, x):
        b = self.train_rank if self.training else self.eval_rank
        return low_rank(x, self.lora_A[:b], self.lora_B[:, :b], self.alpha / b)


@METHODS.register("dylora")
class DyLoRA(AdapterMethod):
    """DyLoRA: LoRA trained on a random rank prefix each step, usable at any rank up to r."""

    category = "low-rank, dynamic rank"
    paper = "Valipour et al., DyLoRA: Parameter-Efficient Tuning of Pre-trained Models using Dynamic Search-Free Low-Rank Adaptation, EACL 2023"
    Params = DyLoraParams
    Layer = DyLoraLinear
    # DyLoRA trains LoRA's factors on a rank prefix: it takes LoRA's rate.
    default_lr = 5e-4
    default_lr_source = f"inherits LoRA's rate: {LORA_LR_SOURCE}"

    def apply(self, model, ctx):
        self.generator = torch.Generator().manual_seed(ctx.seed)
        model = super().apply(model, ctx)
        self._sample_rank(model)
        return model

    def make_layer(self, base, index, ctx):
        p = self.params
        return DyLoraLinear(base, p.r, p.alpha, p.eval_rank or p.r)

    def _sample_rank(self, model) -> None:
        b = int(torch.randint(1, self.params.r + 1, (1,), generator=self.generator))
        for _, layer in self.layers(model):
            layer.train_rank = b

    def on_step(self, step, model):
        self._sample_rank(model)  # the rank for the next step

    @torch.no_grad()
    def finalize(self, model):
        for _, layer in self.layers(model):
            if layer.eval_rank < layer.rank:
                layer.keep_ranks(torch.arange(layer.eval_rank))
                layer.train_rank = layer.eval_rank
        return model
