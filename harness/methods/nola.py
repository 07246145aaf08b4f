"""NOLA (Koohpayegani et al., NOLA: Compressing LoRA using Linear Combination of Random
Basis, ICLR 2024).

A LoRA update scale * B A in which A and B are not trained directly: each is a linear
combination of fixed random basis matrices, A = sum_i a_i A_i (k_a of them, r x in) and
B = sum_j b_j B_j (k_b, out x r), and only the coefficients a, b train. The trainable
count per layer is k_a + k_b, whatever the rank and layer size.

The bases come from a per-layer seed (derived from the run seed and the layer's index),
entries uniform in [-1, 1] / sqrt(k), as in the official code (github.com/UCDvision/NOLA).
They are kept as non-persistent buffers (regenerable from the seed, so not saved), which
costs r * (k_a * in + k_b * out) floats of memory per layer; the official code
regenerates them in every forward and backward pass instead, trading compute for memory.
b starts at zero so the model starts unchanged; a starts random, scaled so that A has
LoRA's Kaiming-uniform variance (the official code instead adds a fixed random A to a
zero-initialised combination). Defaults: the official GPT-2 Medium E2E script (query and
value, r = 8, k_a = k_b = 512, alpha = 8, learning rate 5e-3); the paper has no GLUE runs.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from harness.methods.adapters import AdapterLinear, AdapterMethod, AdapterParams, low_rank
from harness.methods.base import METHODS

SEED_STRIDE = 1_000_003  # layer seeds: run_seed * SEED_STRIDE + layer index, distinct within a run


class NolaParams(AdapterParams):
    alpha: float = Field(8, gt=0, description="scale numerator: the update is scaled by alpha / r")
    num_basis_a: int = Field(512, gt=0, description="random basis matrices combined into A (trained coefficients)")
    num_basis_b: int = Field(512, gt=0, description="random basis matrices combined into B (trained coefficients)")


def random_bases(seed: int, num_a: int, num_b: int, r: int, in_features: int, out_features: int):
    """The fixed bases of one layer, (num_a, r, in) and (num_b, out, r), and the generator
    after drawing them (for the initial coefficients). Same seed, same bases."""
    g = torch.Generator().manual_seed(seed)
    basis_a = (torch.rand(num_a, r, in_features, generator=g) * 2 - 1) / math.sqrt(num_a)
    basis_b = (torch.rand(num_b, out_features, r, generator=g) * 2 - 1) / math.sqrt(num_b)
    return basis_a, basis_b, g


class NolaLinear(AdapterLinear):
    def __init__(self, base: nn.Linear, r: int, alpha: float, num_a: int, num_b: int, seed: int):
        super().__init__(base)
        self.seed, self.scale = seed, alpha / r
        basis_a, basis_b, g = random_bases(seed, num_a, num_b, r, self.in_features, self.out_features)
        self.register_buffer("basis_a", basis_a.to(**self.factory), persistent=False)
        self.register_buffer("basis_b", basis_b.to(**self.factory), persistent=False)
        # Each basis entry has variance 1 / (3 num_a); coefficients N(0, 1 / in) give A the
        # variance 1 / (3 in) of LoRA's Kaiming-uniform A.
        self.coef_a = nn.Parameter((torch.randn(num_a, generator=g) / math.sqrt(self.in_features)).to(**self.factory))
        self.coef_b = nn.Parameter(torch.zeros(num_b, **self.factory))

    def delta(self, x):
        A = torch.einsum("k,kri->ri", self.coef_a, self.basis_a)
        B = torch.einsum("k,kor->or", self.coef_b, self.basis_b)
        return low_rank(x, A, B, self.scale)


@METHODS.register("nola")
class NOLA(AdapterMethod):
    """NOLA: LoRA whose A and B are trained mixtures of fixed random basis matrices."""

    category = "low-rank, random basis"
    paper = "Koohpayegani et al., NOLA: Compressing LoRA using Linear Combination of Random Basis, ICLR 2024"
    Params = NolaParams
    Layer = NolaLinear
    default_lr = 5e-3
    default_lr_source = "Koohpayegani et al. 2024 (NOLA), official GPT-2 Medium E2E script: learning rate 5e-3"

    def make_layer(self, base, index, ctx):
        p = self.params
        return NolaLinear(base, p.r, p.alpha, p.num_basis_a, p.num_basis_b, ctx.seed * SEED_STRIDE + index)
