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

from harness.methods.base import METHODS
from harness.methods.peft_family import MergeableParams, PeftMethod, peft_args


class _Orthogonal(PeftMethod):
    category = "orthogonal"


class OFTParams(MergeableParams):
    block_size: int = Field(32, gt=0, description="size of each orthogonal block (peft default)")
    coft: bool = Field(False, description="constrained OFT: keep the rotation within eps of the identity")
    eps: float = Field(6e-5, gt=0)
    block_share: bool = False


@METHODS.register("oft")
class OFT(_Orthogonal):
    """OFT: multiply frozen weights by a learned block-diagonal orthogonal matrix (peft)."""

    paper = "Qiu et al., Controlling Text-to-Image Diffusion by Orthogonal Finetuning, NeurIPS 2023"
    Params = OFTParams
    default_lr = 1e-4
    default_lr_source = (
        "peft method_comparison/MetaMathQA experiments/oft/llama-3.2-3B-rank32: "
        "the default_training_params.json rate, AdamW lr 1e-4"
    )
    config_class = "OFTConfig"
    config_fields = peft_args("coft", "eps", "block_share", oft_block_size="block_size")

    def extra_config(self, ctx, model):
        return {"r": 0}  # the block size fixes the block count


class BOFTParams(MergeableParams):
    block_size: int = Field(4, gt=0, description="butterfly block size (peft default)")
    n_butterfly_factor: int = Field(1, gt=0, description="number of butterfly factors minus one")
    dropout: float = Field(0.0, ge=0, lt=1)


@METHODS.register("boft")
class BOFT(_Orthogonal):
    """BOFT: orthogonal fine-tuning with butterfly-factorised orthogonal matrices (peft)."""

    paper = "Liu et al., Parameter-Efficient Orthogonal Finetuning via Butterfly Factorization, ICLR 2024"
    Params = BOFTParams
    default_lr = 1e-4
    default_lr_source = (
        "peft method_comparison/MetaMathQA experiments/boft/llama-3.2-3B-default: "
        "the default_training_params.json rate, AdamW lr 1e-4"
    )
    config_class = "BOFTConfig"
    config_fields = peft_args(
        boft_block_size="block_size", boft_n_butterfly_factor="n_butterfly_factor", boft_dropout="dropout"
    )


class HRAParams(MergeableParams):
    r: int = Field(8, gt=0, description="number of Householder reflections (paper: 8)")
    apply_gs: bool = Field(False, description="Gram-Schmidt orthogonalise the reflection vectors")


@METHODS.register("hra")
class HRA(_Orthogonal):
    """HRA: multiply frozen weights by a chain of r learned Householder reflections (peft)."""

    paper = "Yuan et al., Bridging The Gap between Low-rank and Orthogonal Adaptation via Householder Reflection Adaptation, NeurIPS 2024"
    Params = HRAParams
    default_lr = 5e-3
    default_lr_source = "peft examples/hra_dreambooth/train_dreambooth.sh: --learning_rate=5e-3"
    rank_param = "r"
    config_class = "HRAConfig"
    config_fields = peft_args("r", apply_GS="apply_gs")


class RoadParams(MergeableParams):
    variant: Literal["road_1", "road_2", "road_4"] = Field(
        "road_1", description="angles and scales shared per pair (1), per element (2) or two per element (4)"
    )
    group_size: int = Field(
        64, gt=0, description="features grouped into 2-D pairs; must divide the layer's output size"
    )


@METHODS.register("road")
class RoAd(_Orthogonal):
    """RoAd: learned 2-D rotations and scales of pairs of output features (peft)."""

    paper = "Liao et al., 2D Rotary Adaptation: Efficient Fine-tuning, Efficient Batching and Composability, arXiv 2024"
    Params = RoadParams
    default_lr = 1e-3
    default_lr_source = (
        "peft examples/road_finetuning/README.md: --learning_rate 1e-3 "
        "(and method_comparison/MetaMathQA experiments/road/llama-3.2-3B-lr_0.001)"
    )
    config_class = "RoadConfig"
    config_fields = peft_args("variant", "group_size")
