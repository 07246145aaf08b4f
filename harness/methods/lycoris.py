"""LoHa and LoKr (the LyCORIS family) through peft: the weight update is a Hadamard
product of two low-rank products (LoHa) or a Kronecker product with a low-rank factor
(LoKr), reaching a higher effective rank for the same parameter count than LoRA."""

from __future__ import annotations

from pydantic import Field

from harness.methods.base import METHODS, MethodParams
from harness.methods.peft_family import PeftMethod


class LycorisParams(MethodParams):
    r: int = Field(8, gt=0)
    alpha: float = Field(8, gt=0, description="update scaled by alpha / r (peft default: alpha = r)")
    rank_dropout: float = Field(0.0, ge=0, lt=1)
    module_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    merge: bool = False


class _Lycoris(PeftMethod):
    Params = LycorisParams
    category = "low-rank, structured product"
    paper = (
        "Yeh et al., Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model Evaluation, ICLR 2024"
    )
    rank_param = "r"
    default_lr = 2e-3  # the LoRA budget rate; the family's papers tune per task
    config_name = ""

    def peft_config(self, ctx, model):
        import peft

        p = self.params
        return getattr(peft, self.config_name)(
            r=p.r,
            alpha=p.alpha,
            rank_dropout=p.rank_dropout,
            module_dropout=p.module_dropout,
            target_modules=p.target_modules,
            **self.common_kwargs(ctx),
        )


@METHODS.register("loha")
class LoHa(_Lycoris):
    """LoHa: update = (B1 A1) * (B2 A2), a Hadamard product of two low-rank products (peft)."""

    name = "loha"
    config_name = "LoHaConfig"


@METHODS.register("lokr")
class LoKr(_Lycoris):
    """LoKr: update = C kron (B A), a Kronecker product with a low-rank factor (peft)."""

    name = "lokr"
    config_name = "LoKrConfig"
