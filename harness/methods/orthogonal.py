"""Orthogonal fine-tuning through peft: the frozen weight is multiplied by a learned
orthogonal matrix, which preserves the angles between neurons (hyperspherical energy).

- OFT (Qiu et al., NeurIPS 2023): a block-diagonal orthogonal matrix (Cayley transform).
- BOFT (Liu et al., ICLR 2024): a product of sparse butterfly orthogonal factors.
- HRA (Yuan et al., NeurIPS 2024): a chain of r Householder reflections.
- RoAd (Liao et al., 2024): learned 2-D rotations (and scales) of pairs of output features.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from harness.methods.base import METHODS, MethodParams
from harness.methods.peft_family import PeftMethod

# Orthogonal adapters start at the identity and tolerate larger steps than LoRA; at the
# 3-epoch budget default this rate converges on SST-2-size data.
ORTHOGONAL_LR = 2e-3


class OFTParams(MethodParams):
    block_size: int = Field(32, gt=0, description="size of each orthogonal block (peft default)")
    coft: bool = Field(False, description="constrained OFT: keep the rotation within eps of the identity")
    eps: float = Field(6e-5, gt=0)
    block_share: bool = False
    target_modules: list[str] | None = None
    merge: bool = False


@METHODS.register("oft")
class OFT(PeftMethod):
    """OFT: multiply frozen weights by a learned block-diagonal orthogonal matrix (peft)."""

    name = "oft"
    category = "orthogonal"
    paper = "Qiu et al., Controlling Text-to-Image Diffusion by Orthogonal Finetuning, NeurIPS 2023"
    Params = OFTParams
    default_lr = ORTHOGONAL_LR

    def peft_config(self, ctx, model):
        from peft import OFTConfig

        p = self.params
        return OFTConfig(
            r=0,
            oft_block_size=p.block_size,
            coft=p.coft,
            eps=p.eps,
            block_share=p.block_share,
            target_modules=p.target_modules,
            **self.common_kwargs(ctx),
        )


class BOFTParams(MethodParams):
    block_size: int = Field(4, gt=0, description="butterfly block size (peft default)")
    n_butterfly_factor: int = Field(1, gt=0, description="number of butterfly factors minus one")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    merge: bool = False


@METHODS.register("boft")
class BOFT(PeftMethod):
    """BOFT: orthogonal fine-tuning with butterfly-factorised orthogonal matrices (peft)."""

    name = "boft"
    category = "orthogonal"
    paper = "Liu et al., Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization, ICLR 2024"
    Params = BOFTParams
    default_lr = ORTHOGONAL_LR

    def peft_config(self, ctx, model):
        from peft import BOFTConfig

        p = self.params
        return BOFTConfig(
            boft_block_size=p.block_size,
            boft_n_butterfly_factor=p.n_butterfly_factor,
            boft_dropout=p.dropout,
            target_modules=p.target_modules,
            **self.common_kwargs(ctx),
        )


class HRAParams(MethodParams):
    r: int = Field(8, gt=0, description="number of Householder reflections (paper: 8)")
    apply_gs: bool = Field(False, description="Gram-Schmidt orthogonalise the reflection vectors")
    target_modules: list[str] | None = None
    merge: bool = False


@METHODS.register("hra")
class HRA(PeftMethod):
    """HRA: multiply frozen weights by a chain of r learned Householder reflections (peft)."""

    name = "hra"
    category = "orthogonal"
    paper = "Yuan et al., Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder Reflection Adaptation, NeurIPS 2024"
    Params = HRAParams
    rank_param = "r"
    default_lr = ORTHOGONAL_LR

    def peft_config(self, ctx, model):
        from peft import HRAConfig

        p = self.params
        return HRAConfig(r=p.r, apply_GS=p.apply_gs, target_modules=p.target_modules, **self.common_kwargs(ctx))


class RoadParams(MethodParams):
    variant: Literal["road_1", "road_2", "road_4"] = Field(
        "road_1", description="angles and scales shared per pair (1), per element (2) or two per element (4)"
    )
    group_size: int = Field(
        64, gt=0, description="features grouped into 2-D pairs; must divide the layer's output size"
    )
    target_modules: list[str] | None = None
    merge: bool = False


@METHODS.register("road")
class RoAd(PeftMethod):
    """RoAd: learned 2-D rotations and scales of pairs of output features (peft)."""

    name = "road"
    category = "orthogonal"
    paper = "Liao et al., 2D Rotary Adaptation: Efficient Fine-tuning, Efficient Batching and Composability, arXiv 2024"
    Params = RoadParams
    default_lr = ORTHOGONAL_LR

    def peft_config(self, ctx, model):
        from peft import RoadConfig

        p = self.params
        return RoadConfig(
            variant=p.variant, group_size=p.group_size, target_modules=p.target_modules, **self.common_kwargs(ctx)
        )
