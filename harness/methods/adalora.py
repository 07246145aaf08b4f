"""AdaLoRA (Zhang et al., ICLR 2023) through peft: SVD-shaped adapters whose rank budget
is reallocated during training by an importance score.

Schedule (peft names): ranks start at `init_r`, stay fixed for the first `tinit` steps,
are pruned towards the average `target_r` every `deltaT` steps, and are frozen for the
last `tfinal` steps. The harness expresses tinit and tfinal as fractions of the run, so
the schedule fits any budget; peft's `update_and_allocate` runs in `on_step`, while the
gradients it scores are still present.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from harness.core.errors import HarnessError
from harness.methods.base import METHODS
from harness.methods.peft_family import PeftMethod, TargetedParams, peft_args


class AdaLoraParams(TargetedParams):
    init_r: int = Field(12, gt=0, description="initial rank per layer (paper: 1.5x target)")
    target_r: int = Field(8, gt=0, description="average rank after budget allocation")
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    tinit_frac: float = Field(0.1, ge=0, lt=1, description="warm-up share of steps before pruning")
    tfinal_frac: float = Field(0.3, ge=0, lt=1, description="final share of steps with ranks frozen")
    delta_t: int = Field(10, gt=0, description="steps between budget reallocations")
    beta1: float = Field(0.85, gt=0, lt=1)
    beta2: float = Field(0.85, gt=0, lt=1)
    orth_reg_weight: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _check(self):
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        if self.tinit_frac + self.tfinal_frac >= 1:
            raise ValueError("tinit_frac + tfinal_frac must be below 1 (no steps left for pruning)")
        return self


@METHODS.register("adalora")
class AdaLoRA(PeftMethod):
    """AdaLoRA: SVD-form adapters with importance-driven rank allocation (peft)."""

    category = "low-rank, adaptive rank"
    paper = "Zhang et al., Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning, ICLR 2023"
    Params = AdaLoraParams
    default_lr = 8e-4
    default_lr_source = (
        "QingruZhang/AdaLoRA NLU/scripts/run_debertav3_sst2.sh: --learning_rate 8e-4 (DeBERTaV3-base, SST-2)"
    )
    rank_param = "init_r"
    config_class = "AdaLoraConfig"
    config_fields = peft_args(
        "init_r",
        "target_r",
        "beta1",
        "beta2",
        "orth_reg_weight",
        lora_alpha="alpha",
        lora_dropout="dropout",
        deltaT="delta_t",
    )

    def extra_config(self, ctx, model):
        total = ctx.total_steps
        tinit, tfinal = int(self.params.tinit_frac * total), int(self.params.tfinal_frac * total)
        if total - tinit - tfinal < 1:
            raise HarnessError(f"method 'adalora': {total} steps leave no pruning phase; train longer")
        return {"tinit": tinit, "tfinal": tfinal, "total_step": total}

    def on_step(self, step, model):
        model.base_model.update_and_allocate(step)
