"""VeRA (Kopiczko et al., ICLR 2024) through peft: one pair of frozen random low-rank
matrices shared by all layers; each layer trains only two scaling vectors."""

from __future__ import annotations

from pydantic import Field

from harness.methods.base import METHODS
from harness.methods.peft_family import PeftMethod, TargetedParams, peft_args


class VeraParams(TargetedParams):
    r: int = Field(
        256, gt=0, description="rank of the shared random matrices (peft default; the paper uses 1024 for RoBERTa-base)"
    )
    dropout: float = Field(0.0, ge=0, lt=1)
    d_initial: float = Field(0.1, gt=0, description="initial value of the d scaling vector")


@METHODS.register("vera")
class VeRA(PeftMethod):
    """VeRA: shared frozen random low-rank matrices, per-layer trained scaling vectors (peft)."""

    category = "low-rank, shared random"
    paper = "Kopiczko et al., VeRA: Vector-based Random Matrix Adaptation, ICLR 2024"
    Params = VeraParams
    default_lr = 4e-3
    default_lr_source = (
        "Kopiczko et al. 2024 (VeRA), Table 8: RoBERTa-base SST-2 learning rate 4e-3 for the scaling vectors"
    )
    config_class = "VeraConfig"
    config_fields = peft_args("r", "d_initial", vera_dropout="dropout")

    def extra_config(self, ctx, model):
        return {"projection_prng_key": ctx.seed}
