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

from harness.methods.base import METHODS, MethodParams
from harness.methods.peft_family import PeftMethod


class FourierFTParams(MethodParams):
    n_frequency: int = Field(
        1000, gt=0, description="learned spectral coefficients per layer (paper: 1000 for RoBERTa-base)"
    )
    scaling: float = Field(150.0, gt=0, description="scale of the update (paper: 150 for GLUE)")
    random_loc_seed: int = 777
    target_modules: list[str] | None = None
    merge: bool = False


@METHODS.register("fourierft")
class FourierFT(PeftMethod):
    """FourierFT: learn sparse spectral coefficients; the update is their inverse Fourier transform (peft)."""

    name = "fourierft"
    category = "spectral"
    paper = "Gao et al., Parameter-Efficient Fine-Tuning with Discrete Fourier Transform, ICML 2024"
    Params = FourierFTParams
    default_lr = 2e-2  # the paper's GLUE rates for the coefficients are 5e-2..1e-1; the head shares this one

    def peft_config(self, ctx, model):
        from peft import FourierFTConfig

        p = self.params
        return FourierFTConfig(
            n_frequency=p.n_frequency,
            scaling=p.scaling,
            random_loc_seed=p.random_loc_seed,
            target_modules=p.target_modules,
            **self.common_kwargs(ctx),
        )


class RandLoraParams(MethodParams):
    r: int = Field(32, gt=0, description="rank of each random basis (peft default)")
    alpha: float = Field(640, gt=0, description="scale (peft default: 20 r)")
    dropout: float = Field(0.0, ge=0, lt=1)
    sparse: bool = False
    target_modules: list[str] | None = None


@METHODS.register("randlora")
class RandLoRA(PeftMethod):
    """RandLoRA: full-rank update from fixed random low-rank bases with learned scalings (peft)."""

    name = "randlora"
    category = "low-rank, shared random"
    paper = "Albert et al., RandLoRA: Full-rank Parameter-efficient Fine-tuning of Large Models, ICLR 2025"
    Params = RandLoraParams
    rank_param = "r"
    default_lr = 2e-3

    def peft_config(self, ctx, model):
        from peft import RandLoraConfig

        p = self.params
        return RandLoraConfig(
            r=p.r,
            randlora_alpha=p.alpha,
            randlora_dropout=p.dropout,
            sparse=p.sparse,
            projection_prng_key=ctx.seed,
            target_modules=p.target_modules,
            **self.common_kwargs(ctx),
        )


class VBLoraParams(MethodParams):
    r: int = Field(4, gt=0, description="rank of the assembled LoRA factors (paper: 4)")
    num_vectors: int = Field(256, gt=0, description="vectors in the shared bank")
    vector_length: int = Field(256, gt=0, description="length of each vector; must divide the layers' dimensions")
    topk: int = Field(2, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    merge: bool = False


@METHODS.register("vblora")
class VBLoRA(PeftMethod):
    """VB-LoRA: LoRA factors mixed top-k from one shared vector bank (peft)."""

    name = "vblora"
    category = "low-rank, shared bank"
    paper = "Li et al., VB-LoRA: Extreme Parameter Efficient Fine-Tuning with Vector Banks, NeurIPS 2024"
    Params = VBLoraParams
    rank_param = "r"
    default_lr = 2e-3

    def peft_config(self, ctx, model):
        from peft import VBLoRAConfig

        p = self.params
        return VBLoRAConfig(
            r=p.r,
            num_vectors=p.num_vectors,
            vector_length=p.vector_length,
            topk=p.topk,
            vblora_dropout=p.dropout,
            target_modules=p.target_modules,
            **self.common_kwargs(ctx),
        )


class MissParams(MethodParams):
    r: int = Field(64, gt=0, description="block size (peft default)")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None
    merge: bool = False


@METHODS.register("miss")
class MiSS(PeftMethod):
    """MiSS (formerly Bone): a shared block matrix added to frozen weights (peft)."""

    name = "miss"
    category = "block"
    paper = "Kang, MiSS (Bone): Balancing LoRA Performance and Efficiency with Simple Shard Sharing, arXiv 2024"
    Params = MissParams
    rank_param = "r"
    default_lr = 2e-3

    def peft_config(self, ctx, model):
        from peft import MissConfig

        p = self.params
        return MissConfig(r=p.r, miss_dropout=p.dropout, target_modules=p.target_modules, **self.common_kwargs(ctx))
