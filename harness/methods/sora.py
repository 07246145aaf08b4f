"""SoRA (Ding et al., Sparse Low-rank Adaptation of Pre-trained Language Models, EMNLP 2023).

A LoRA update with a gate on the rank dimension, scale * B diag(g) A x, trained at an
initial rank r_max. The gate is trained by a proximal gradient method for an L1 penalty:
an Adam step, then the soft threshold g <- sign(g) * max(|g| - xi, 0), which drives
unneeded ranks to exactly zero; `finalize` then drops them, leaving a smaller LoRA with
the same outputs. The ranks kept are in the row's pipeline_costs (`ranks_kept` of
`ranks_max`, in the step's notes) and in `adapter_bytes`, counted after finalize.

As the official code (github.com/TsinghuaC3I/SoRA) does it:
- `src/trainer.py` takes the gate (`lora.gate`) out of the main AdamW and steps it with its
  own optimizer, `src/sparse_optimizer.py` SparseAdamW: transformers-style Adam (eps 1e-6
  added to sqrt(v), bias correction folded into the step size), no weight decay, the soft
  threshold applied right after the update, with xi as given (not scaled by the current
  learning rate), at the main learning rate (`sparse_lr` defaults to it in `run_glue.py`)
  on the same linear warm-up schedule. Here both optimizers are one (`SoraAdamW`): torch's
  AdamW for every other parameter, that step for the gates; the loop's scheduler scales
  both alike, as the two identical official schedules do.
- `compute_loss` adds `sparse_lambda * sum|g| / (number of gate entries)` to the loss.
- The official GLUE script (`scripts/run_glue_sora_no_schedule.sh`) sets sparse_lambda = 10
  and sparse_lambda_2 (xi) = 3e-4, lr 8e-4, r 8: these are the defaults here.
- The official step zeroes the gate with three masked in-place updates in a row, the last
  one testing the already shifted values, so it zeroes every |g| < 2 xi; this applies the
  paper's soft threshold (zero below xi, shrink by xi above), which that code intends.

Other defaults from that code: alpha = 16, gate initialised N(0, 1), A Kaiming-uniform and
B zero (so the model starts unchanged).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from harness.methods.adapters import AdapterMethod, AdapterParams, LowRankLinear, low_rank
from harness.methods.base import METHODS
from harness.methods.optim import NO_DECAY

GATE_EPS = 1e-6  # transformers' AdamW default, which the official SparseAdamW inherits
GATE_BETAS = (0.9, 0.999)


class SoraParams(AdapterParams):
    r: int = Field(8, gt=0, description="initial (maximum) rank r_max")
    # official GLUE script: --sparse_lambda_2 3e-4 (the soft threshold xi)
    sparsity_lambda: float = Field(
        3e-4, ge=0, description="soft threshold xi on the gate after each step (official code: sparse_lambda_2)"
    )
    # official GLUE script: --sparse_lambda 10 (the L1 term's coefficient)
    l1_lambda: float = Field(
        10.0, ge=0, description="coefficient of the L1 term mean|g| added to the loss (official code: sparse_lambda)"
    )


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


def soft_threshold(x: torch.Tensor, xi: float) -> torch.Tensor:
    """The proximal operator of xi * |x|: sign(x) * max(|x| - xi, 0)."""
    return x.sign() * (x.abs() - xi).clamp(min=0)


@torch.no_grad()
def gate_step(
    p: torch.Tensor,
    grad: torch.Tensor,
    state: dict,
    lr: float,
    threshold: float,
    betas: tuple[float, float] = GATE_BETAS,
    eps: float = GATE_EPS,
) -> None:
    """One step of the official gate optimizer on `p`, in place: Adam with the bias correction
    in the step size and eps added to sqrt(v), no weight decay, then the soft threshold."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)
        state["exp_avg_sq"] = torch.zeros_like(p)
    beta1, beta2 = betas
    state["step"] += 1
    t = state["step"]
    state["exp_avg"].mul_(beta1).add_(grad, alpha=1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    step_size = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    p.add_(state["exp_avg"] / (state["exp_avg_sq"].sqrt() + eps), alpha=-step_size)
    if threshold > 0:
        p.copy_(soft_threshold(p, threshold))


class SoraAdamW(torch.optim.AdamW):
    """torch's AdamW for every group but those with a `gate_threshold`, which take `gate_step`."""

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        held = []
        for group in self.param_groups:
            if "gate_threshold" not in group:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                gate_step(p, p.grad, self.state[p], group["lr"], group["gate_threshold"], group["betas"], GATE_EPS)
                held.append((p, p.grad))
                p.grad = None  # hidden from AdamW's step below, which skips parameters without a gradient
        try:
            super().step()
        finally:
            for p, grad in held:
                p.grad = grad
        return loss


@METHODS.register("sora")
class SoRA(AdapterMethod):
    """SoRA: LoRA with an L1-sparsified gate on the rank; zeroed ranks are removed after training."""

    category = "low-rank, adaptive rank"
    paper = "Ding et al., Sparse Low-rank Adaptation of Pre-trained Language Models, EMNLP 2023"
    Params = SoraParams
    Layer = SoraLinear
    default_lr = 8e-4
    default_lr_source = "Ding et al. 2023 (SoRA), official GLUE scripts (DeBERTaV3-base): learning rate 8e-4"
    version = 2  # official L1 term, own gate optimizer, GLUE threshold

    def make_layer(self, base, index, ctx):
        return SoraLinear(base, self.params.r, self.params.alpha)

    def apply(self, model, ctx):
        model = super().apply(model, ctx)
        self.gates = [layer.gate for _, layer in self.layers(model)]
        self.names = {id(p): n for n, p in model.named_parameters()}
        self.notes["ranks_max"] = sum(g.numel() for g in self.gates)
        return model

    def optimizer(self, params, ctx):

        gates = {id(g) for g in self.gates}
        rest = [p for p in params if id(p) not in gates]
        decay = [p for p in rest if not self.names.get(id(p), "").endswith(NO_DECAY)]
        no_decay = [p for p in rest if self.names.get(id(p), "").endswith(NO_DECAY)]
        groups = [
            {"params": decay, "weight_decay": ctx.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {
                "params": [p for p in params if id(p) in gates],
                "weight_decay": 0.0,
                "gate_threshold": self.params.sparsity_lambda,
            },
        ]
        return SoraAdamW([g for g in groups if g["params"]], lr=ctx.lr, betas=GATE_BETAS)

    def extra_loss(self, model):
        if not self.params.l1_lambda or not self.gates:
            return None
        total = sum(g.numel() for g in self.gates)
        return self.params.l1_lambda * sum(g.abs().sum() for g in self.gates) / total

    @torch.no_grad()
    def finalize(self, model):
        kept = 0
        for name, layer in self.layers(model):
            keep = layer.gate.nonzero().flatten()
            kept += len(keep)
            if len(keep) == 0:  # every rank pruned: the layer is its base layer again
                model.set_submodule(name, layer.base)
            elif len(keep) < layer.rank:
                layer.keep_ranks(keep)
        self.notes["ranks_kept"] = kept
        return model
