"""Low-rank compression by truncated SVD (as in LORD, Kaushal et al., 2023, and the
classic low-rank factorisation of Denton et al., NeurIPS 2014).

Each linear layer W (out x in) becomes two: x -> V_r^T x (rank r) -> U_r S_r (.) + b.
A convolution (out, in, kh, kw) is factorised on its (out, in*kh*kw) matrix into a kh x kw
convolution to r channels followed by a 1x1 convolution to out channels. The rank is
given directly (`rank`) or chosen per layer as the smallest that keeps `energy` of the
squared singular values. A layer is left as it is at full rank, and (for `energy`) when
factorising would not make it smaller. Inference runs the smaller dense layers: the speed and
memory are real, not simulated.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from harness.compress import as_matrix, compressible_layers
from harness.errors import HarnessError
from harness.method import METHODS, Compression, Method, MethodParams, freeze_all_but


class SVDParams(MethodParams):
    rank: int | None = Field(None, gt=0, description="rank kept in every layer (capped at the layer's full rank)")
    energy: float | None = Field(None, gt=0, le=1, description="share of squared singular values to keep, per layer")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.rank is None) == (self.energy is None):
            raise ValueError("give exactly one of rank or energy, e.g. svd:rank=16 or svd:energy=0.9")
        return self


def factorise(layer: nn.Module, rank: int) -> nn.Sequential:
    """The layer as two smaller ones whose product is its rank-`rank` truncation."""
    weight = as_matrix(layer.weight.detach()).float()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    dtype, bias = layer.weight.dtype, layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias=bias)
        first.weight.data = vh.to(dtype)
    else:
        first = nn.Conv2d(layer.in_channels, rank, layer.kernel_size, stride=layer.stride, padding=layer.padding,
                          dilation=layer.dilation, groups=1, bias=False, padding_mode=layer.padding_mode)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=bias)
        first.weight.data = vh.reshape(rank, *layer.weight.shape[1:]).to(dtype)
    second.weight.data = (u * s).reshape(second.weight.shape).to(dtype)
    if bias:
        second.bias.data = layer.bias.detach().clone()
    return nn.Sequential(first, second).to(layer.weight.device)


def rank_for_energy(layer: nn.Module, energy: float) -> int:
    s = torch.linalg.svdvals(as_matrix(layer.weight.detach()).float())
    kept = torch.cumsum(s**2, 0) / (s**2).sum()
    return int(torch.searchsorted(kept, torch.tensor(energy * (1 - 1e-7))).item()) + 1


@METHODS.register("svd")
class TruncatedSVD(Method):
    """Truncated SVD: each linear/conv layer becomes two low-rank layers (real, smaller dense layers)."""

    name = "svd"
    category = "low-rank compression"
    compresses = True
    paper = "Kaushal et al., LORD: Low Rank Decomposition of Monolingual Code LLMs, 2023; Denton et al., NeurIPS 2014"
    Params = SVDParams

    def apply(self, model, ctx):
        layers = compressible_layers(model, ctx.head_modules)
        if not layers:
            raise HarnessError("method 'svd': the model has no linear or convolution layer to factorise")
        if any(isinstance(m, nn.Conv2d) and m.groups != 1 for _, m in layers):
            layers = [(n, m) for n, m in layers if not (isinstance(m, nn.Conv2d) and m.groups != 1)]  # depthwise: keep
        self.ranks = {}
        for name, layer in layers:
            out_dim, in_dim = as_matrix(layer.weight).shape
            full = min(out_dim, in_dim)
            rank = min(self.params.rank, full) if self.params.rank else rank_for_energy(layer, self.params.energy)
            smaller = rank * (out_dim + in_dim) < out_dim * in_dim
            if rank < full and (self.params.rank or smaller):  # at full rank the layer is already exact
                model.set_submodule(name, factorise(layer, rank))
                self.ranks[name] = rank
        freeze_all_but(model)  # compression alone trains nothing; a later pipeline step decides what trains
        return model

    def compression(self, model):
        return Compression(kernel="real")
