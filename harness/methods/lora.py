"""LoRA and its variants that differ only in configuration, through peft.

LoRA (Hu et al., ICLR 2022) adds a trainable low-rank update B A, scaled by alpha / r,
to frozen weights. The variants here change the scale (rsLoRA), the decomposition
(DoRA) or the initialisation from the weights themselves (PiSSA, OLoRA). Variants that
initialise from data live in `lora_data_init.py`.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from harness.methods.base import METHODS, MethodParams
from harness.methods.peft_family import PeftMethod, default_lora_targets


class LoraParams(MethodParams):
    r: int = Field(8, gt=0, description="rank of the update")
    # alpha = 2r, as in peft's method comparison; the LoRA paper's RoBERTa runs use alpha = r.
    alpha: float = Field(16, gt=0, description="scale numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        None, description="module names; default: peft's per-architecture list (query, value for BERT/RoBERTa)"
    )
    merge: bool = Field(
        False, description="merge the update into the weights after training (measured inference then has no adapter)"
    )


class LoraFamily(PeftMethod):
    """Shared by every LoRA-shaped method: the LoraConfig, with `extra_config` per variant."""

    Params = LoraParams
    category = "low-rank"
    rank_param = "r"
    # The LoRA paper trains RoBERTa-base 30-80 epochs at 4e-4..5e-4. At the 3-epoch default
    # budget a 4x rate is needed to converge (measured: MiniLM-L6, SST-2, 4000 examples).
    default_lr = 2e-3

    def extra_config(self, ctx, model) -> dict[str, Any]:
        return {}

    def peft_config(self, ctx, model):
        from peft import LoraConfig

        p = self.params
        return LoraConfig(
            # Explicit targets: the data-driven initialisers read them before peft would fill them in.
            r=p.r,
            lora_alpha=p.alpha,
            lora_dropout=p.dropout,
            target_modules=p.target_modules or default_lora_targets(model),
            **self.extra_config(ctx, model),
            **self.common_kwargs(ctx),
        )


@METHODS.register("lora")
class LoRA(LoraFamily):
    """LoRA: trainable low-rank update B A on frozen weights (peft)."""

    name = "lora"
    paper = "Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022"


@METHODS.register("dora")
class DoRA(LoraFamily):
    """DoRA: weight-decomposed LoRA, a trained magnitude plus a LoRA-updated direction (peft)."""

    name = "dora"
    paper = "Liu et al., DoRA: Weight-Decomposed Low-Rank Adaptation, ICML 2024"

    def extra_config(self, ctx, model):
        return {"use_dora": True}


@METHODS.register("rslora")
class RsLoRA(LoraFamily):
    """rsLoRA: LoRA scaled by alpha / sqrt(r), stable as the rank grows (peft)."""

    name = "rslora"
    paper = "Kalajdzievski, A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA, arXiv 2023"

    def extra_config(self, ctx, model):
        return {"use_rslora": True}


@METHODS.register("pissa")
class PiSSA(LoraFamily):
    """PiSSA: LoRA initialised from the top singular vectors; the residual stays frozen (peft)."""

    name = "pissa"
    paper = "Meng et al., PiSSA: Principal Singular Values and Singular Vectors Adaptation, NeurIPS 2024"
    # PiSSA adapts the principal components directly; the paper uses the LoRA rate or lower.
    default_lr = 1e-3

    def extra_config(self, ctx, model):
        return {"init_lora_weights": "pissa"}


@METHODS.register("olora")
class OLoRA(LoraFamily):
    """OLoRA: LoRA initialised from a QR decomposition of the weights; the residual stays frozen (peft)."""

    name = "olora"
    paper = "Büyükakyüz, OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models, arXiv 2024"

    def extra_config(self, ctx, model):
        return {"init_lora_weights": "olora"}
