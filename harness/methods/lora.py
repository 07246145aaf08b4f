"""LoRA and its variants that differ only in configuration, through peft.

LoRA (Hu et al., ICLR 2022) adds a trainable low-rank update B A, scaled by alpha / r,
to frozen weights. The variants here change the scale (rsLoRA), the decomposition
(DoRA) or the initialisation from the weights themselves (PiSSA, OLoRA). Variants that
initialise from data live in `lora_data_init.py`.
"""

from __future__ import annotations

from pydantic import Field

from harness.methods.base import METHODS
from harness.methods.peft_family import MergeableParams, PeftMethod, default_lora_targets, peft_args

# Where LoRA's default rate comes from (the official scripts carry Table 9's values).
LORA_LR_SOURCE = (
    "Hu et al. 2022 (LoRA), Table 9: RoBERTa-base GLUE rates 4e-4 (MRPC, CoLA, QNLI, STS-B) and 5e-4 "
    "(MNLI, SST-2, QQP, RTE); microsoft/LoRA examples/NLU/roberta_base_sst2.sh: --learning_rate 5e-4"
)


class LoraParams(MergeableParams):
    # target_modules default: peft's per-architecture list (query, value for BERT/RoBERTa)
    r: int = Field(8, gt=0, description="rank of the update")
    # alpha = 2r, as in peft's method comparison; the LoRA paper's RoBERTa runs use alpha = r.
    alpha: float = Field(16, gt=0, description="scale numerator: the update is scaled by alpha / r")
    dropout: float = Field(0.0, ge=0, lt=1)


class LoraFamily(PeftMethod):
    """Shared by every LoRA-shaped method: the LoraConfig, with `extra_config` per variant."""

    Params = LoraParams
    category = "low-rank"
    rank_param = "r"
    # The LoRA paper's RoBERTa-base rate for SST-2 and MNLI; the variants here and in
    # lora_data_init.py inherit it, as their source says.
    default_lr = 5e-4
    default_lr_source = f"inherits the LoRA family's rate: {LORA_LR_SOURCE}"
    config_class = "LoraConfig"
    config_fields = peft_args("r", lora_alpha="alpha", lora_dropout="dropout")

    def target_modules(self, model):
        # Explicit targets: the data-driven initialisers read them before peft would fill them in.
        return self.params.target_modules or default_lora_targets(model)


@METHODS.register("lora")
class LoRA(LoraFamily):
    """LoRA: trainable low-rank update B A on frozen weights (peft)."""

    paper = "Hu et al., LoRA: Low-Rank Adaptation of Large Language Models, ICLR 2022"
    default_lr_source = LORA_LR_SOURCE


@METHODS.register("dora")
class DoRA(LoraFamily):
    """DoRA: weight-decomposed LoRA, a trained magnitude plus a LoRA-updated direction (peft)."""

    paper = "Liu et al., DoRA: Weight-Decomposed Low-Rank Adaptation, ICML 2024"

    def extra_config(self, ctx, model):
        return {"use_dora": True}


@METHODS.register("rslora")
class RsLoRA(LoraFamily):
    """rsLoRA: LoRA scaled by alpha / sqrt(r), stable as the rank grows (peft)."""

    paper = "Kalajdzievski, A Rank Stabilization Scaling Factor for Fine-Tuning with LoRA, arXiv 2023"

    def extra_config(self, ctx, model):
        return {"use_rslora": True}


@METHODS.register("pissa")
class PiSSA(LoraFamily):
    """PiSSA: LoRA initialised from the top singular vectors; the residual stays frozen (peft)."""

    paper = "Meng et al., PiSSA: Principal Singular Values and Singular Vectors Adaptation, NeurIPS 2024"

    def extra_config(self, ctx, model):
        return {"init_lora_weights": "pissa"}


@METHODS.register("olora")
class OLoRA(LoraFamily):
    """OLoRA: LoRA initialised from a QR decomposition of the weights; the residual stays frozen (peft)."""

    paper = "Büyükakyüz, OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models, arXiv 2024"

    def extra_config(self, ctx, model):
        return {"init_lora_weights": "olora"}
