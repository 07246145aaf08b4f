"""Adapters built from shared or fixed bases, through peft.

- FourierFT (Gao et al., ICML 2024): learn n spectral coefficients at fixed random
  frequencies; the update is their inverse 2-D Fourier transform.
- RandLoRA (Albert et al., ICLR 2025): full-rank updates as sums of fixed random low-rank
  bases with learned diagonal scalings.
- VB-LoRA (Li et al., NeurIPS 2024): LoRA factors assembled from a shared vector bank by
  a learned top-k mixture.
- MiSS, formerly Bone (Kang, 2024): a shared block matrix updated per layer.
"""

from __future__ import annotations

from pydantic import Field

from harness.methods.base import METHODS
from harness.methods.peft_family import MergeableParams, PeftMethod, TargetedParams, peft_args


class FourierFTParams(MergeableParams):
    n_frequency: int = Field(
        1000, gt=0, description="learned spectral coefficients per layer (paper: 1000 for RoBERTa-base)"
    )
    scaling: float = Field(150.0, gt=0, description="scale of the update (paper: 150 for GLUE)")
    random_loc_seed: int = 777


@METHODS.register("fourierft")
class FourierFT(PeftMethod):
    """FourierFT: learn sparse spectral coefficients; the update is their inverse Fourier transform (peft)."""

    category = "spectral"
    paper = "Gao et al., Parameter-Efficient Fine-Tuning with Discrete Fourier Transform, ICML 2024"
    Params = FourierFTParams
    # One rate serves coefficients and head here; the example's is the coefficients' rate.
    default_lr = 6e-2
    default_lr_source = (
        "peft examples/sequence_classification/FourierFT.ipynb (RoBERTa-base, MRPC): fft_lr = 6e-2 "
        "for the spectral coefficients (its head trains at 6e-3)"
    )
    config_class = "FourierFTConfig"
    config_fields = peft_args("n_frequency", "scaling", "random_loc_seed")


class RandLoraParams(TargetedParams):
    r: int = Field(32, gt=0, description="rank of each random basis (peft default)")
    alpha: float = Field(640, gt=0, description="scale (peft default: 20 r)")
    dropout: float = Field(0.0, ge=0, lt=1)
    sparse: bool = False


@METHODS.register("randlora")
class RandLoRA(PeftMethod):
    """RandLoRA: full-rank update from fixed random low-rank bases with learned scalings (peft)."""

    category = "low-rank, shared random"
    paper = "Albert et al., RandLoRA: Full-rank Parameter-efficient Fine-tuning of Large Models, ICLR 2025"
    Params = RandLoraParams
    rank_param = "r"
    default_lr = 3e-4
    default_lr_source = "peft examples/randlora_finetuning/README.md: --learning_rate 3e-4"
    config_class = "RandLoraConfig"
    config_fields = peft_args("r", "sparse", randlora_alpha="alpha", randlora_dropout="dropout")

    def extra_config(self, ctx, model):
        return {"projection_prng_key": ctx.seed}


class VBLoraParams(MergeableParams):
    r: int = Field(4, gt=0, description="rank of the assembled LoRA factors (paper: 4)")
    num_vectors: int = Field(256, gt=0, description="vectors in the shared bank")
    vector_length: int = Field(256, gt=0, description="length of each vector; must divide the layers' dimensions")
    topk: int = Field(2, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


@METHODS.register("vblora")
class VBLoRA(PeftMethod):
    """VB-LoRA: LoRA factors mixed top-k from one shared vector bank (peft)."""

    category = "low-rank, shared bank"
    paper = "Li et al., VB-LoRA: Extreme Parameter Efficient Fine-Tuning with Vector Banks, NeurIPS 2024"
    Params = VBLoraParams
    rank_param = "r"
    # One rate serves the bank, the logits and the head here; the example's is the bank's rate.
    default_lr = 1e-3
    default_lr_source = (
        "peft examples/sequence_classification/VBLoRA.ipynb (RoBERTa): vector_bank_lr = 1e-3 (logits 1e-2, head 4e-3)"
    )
    config_class = "VBLoRAConfig"
    config_fields = peft_args("r", "num_vectors", "vector_length", "topk", vblora_dropout="dropout")


class MissParams(MergeableParams):
    r: int = Field(64, gt=0, description="block size (peft default)")
    dropout: float = Field(0.0, ge=0, lt=1)


@METHODS.register("miss")
class MiSS(PeftMethod):
    """MiSS (formerly Bone): a shared block matrix added to frozen weights (peft)."""

    category = "block"
    paper = "Kang, MiSS (Bone): Balancing LoRA Performance and Efficiency with Simple Shard Sharing, arXiv 2024"
    Params = MissParams
    rank_param = "r"
    default_lr = 2e-5
    default_lr_source = "peft examples/miss_finetuning/README.md: --learning_rate 2e-5"
    config_class = "MissConfig"
    config_fields = peft_args("r", miss_dropout="dropout")
