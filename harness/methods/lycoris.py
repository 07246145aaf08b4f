"""LoHa and LoKr (the LyCORIS family) through peft: the weight update is a Hadamard
product of two low-rank products (LoHa) or a Kronecker product with a low-rank factor
(LoKr), reaching a higher effective rank for the same parameter count than LoRA."""

from __future__ import annotations

from pydantic import Field

from harness.methods.base import METHODS
from harness.methods.peft_family import MergeableParams, PeftMethod, peft_args


class LycorisParams(MergeableParams):
    r: int = Field(8, gt=0)
    alpha: float = Field(8, gt=0, description="update scaled by alpha / r (peft default: alpha = r)")
    rank_dropout: float = Field(0.0, ge=0, lt=1)
    module_dropout: float = Field(0.0, ge=0, lt=1)


class _Lycoris(PeftMethod):
    Params = LycorisParams
    category = "low-rank, structured product"
    paper = (
        "Yeh et al., Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation, ICLR 2024"
    )
    rank_param = "r"
    config_fields = peft_args("r", "alpha", "rank_dropout", "module_dropout")


@METHODS.register("loha")
class LoHa(_Lycoris):
    """LoHa: update = (B1 A1) * (B2 A2), a Hadamard product of two low-rank products (peft)."""

    config_class = "LoHaConfig"
    default_lr = 1e-4
    default_lr_source = (
        "peft method_comparison/MetaMathQA experiments/loha/llama-3.2-3B-rank32: "
        "the default_training_params.json rate, AdamW lr 1e-4"
    )


@METHODS.register("lokr")
class LoKr(_Lycoris):
    """LoKr: update = C kron (B A), a Kronecker product with a low-rank factor (peft)."""

    config_class = "LoKrConfig"
    default_lr = 3e-3
    default_lr_source = (
        "peft method_comparison/MetaMathQA experiments/lokr/llama-3.2-3B-rank32-factor4-lr0.003: lr 3e-3"
    )
