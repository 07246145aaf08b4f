"""Low-rank compression by truncated SVD (as in LORD, Kaushal et al., 2023, and the
classic low-rank factorisation of Denton et al., NeurIPS 2014).

Each linear layer W (out x in) becomes two: x -> V_r^T x (rank r) -> U_r S_r (.) + b.
A convolution (out, in, kh, kw) is factorised on its (out, in*kh*kw) matrix into a kh x kw
convolution to r channels followed by a 1x1 convolution to out channels. The rank is
given directly (`rank`) or chosen per layer as the smallest that keeps `energy` of the
squared singular values. A layer is left as it is at full rank, and (for `energy`) when
factorising would not make it smaller. Inference runs the smaller dense layers: the speed and
memory are real, not simulated.

`activation_aware=true` is ASVD (Yuan et al., ASVD: Activation-aware Singular Value
Decomposition for Compressing Large Language Models, 2023): input features that carry large
activations should be kept more exactly than those that are nearly always small. Per layer,
S = diag(s_j), s_j = (mean |x_j|)^alpha over the calibration inputs; the SVD is taken of W S
and S^-1 is folded into the first factor, W ~ (U_r Sigma_r)(V_r^T S^-1), so the truncation
minimises ||(W - W_r) S||_F, the output error on inputs of per-feature size S, rather than the
plain ||W - W_r||_F (with `energy`, the rank keeps that share of W S's spectrum). For a
convolution, x_j is an element (channel, kh, kw) of the unfolded input patch (zero padding
included), the very vector the kernel's flattened weight multiplies, so every column of the
(out, in*kh*kw) matrix gets its own scale.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, Compression, MethodParams
from harness.methods.compress import CompressionMethod, as_matrix, calibrate, conv_like, feature_sums


class SVDParams(MethodParams):
    rank: int | None = Field(None, gt=0, description="rank kept in every layer (capped at the layer's full rank)")
    energy: float | None = Field(None, gt=0, le=1, description="share of squared singular values to keep, per layer")
    activation_aware: bool = Field(False, description="ASVD: factorise W diag(mean|x|^alpha) from calibration batches")
    alpha: float = Field(
        0.5, ge=0, le=1, description="ASVD's exponent on the mean absolute input (the paper's default 0.5)"
    )
    n_batches: int = Field(8, ge=1, description="calibration batches for activation_aware")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.rank is None) == (self.energy is None):
            raise ValueError("give exactly one of rank or energy, e.g. svd:rank=16 or svd:energy=0.9")
        unused = sorted({"alpha", "n_batches"} & self.model_fields_set)
        if unused and not self.activation_aware:
            raise ValueError(f"{' and '.join(unused)} only apply with activation_aware=true")
        return self


def scaled_matrix(layer: nn.Module, input_scale: torch.Tensor | None) -> torch.Tensor:
    """The layer's (out, in) weight in float, times diag(input_scale) when given (ASVD's W S)."""
    weight = as_matrix(layer.weight.detach()).float()
    return weight if input_scale is None else weight * input_scale.to(weight.device, torch.float32)


def svd_of(layer: nn.Module, input_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """u, s, vh of the layer's (out, in) weight (times ASVD's S when given), thin."""
    return torch.linalg.svd(scaled_matrix(layer, input_scale), full_matrices=False)


def factorise(
    layer: nn.Module, rank: int, input_scale: torch.Tensor | None = None, svd: tuple[torch.Tensor, ...] | None = None
) -> nn.Sequential:
    """The layer as two smaller ones whose product is its rank-`rank` truncation; with
    `input_scale` (ASVD's S), the truncation of W S with S^-1 folded into the first factor.
    `svd` is `svd_of(layer, input_scale)` when the caller has it already."""
    u, s, vh = svd if svd is not None else svd_of(layer, input_scale)
    u, s, vh = u[:, :rank], s[:rank], vh[:rank]
    if input_scale is not None:
        vh = vh / input_scale.to(vh.device, torch.float32)
    dtype, bias = layer.weight.dtype, layer.bias is not None
    if isinstance(layer, nn.Linear):
        first, second = nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias=bias)
        first.weight.data = vh.to(dtype)
    else:
        first = conv_like(layer, layer.in_channels, rank, bias=False)
        second = nn.Conv2d(rank, layer.out_channels, 1, bias=bias)
        first.weight.data = vh.reshape(rank, *layer.weight.shape[1:]).to(dtype)
    second.weight.data = (u * s).reshape(second.weight.shape).to(dtype)
    if bias:
        second.bias.data = layer.bias.detach().clone()
    return nn.Sequential(first, second).to(layer.weight.device)


def rank_keeping(s: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values `s` (descending) keep `energy` of the squared sum."""
    kept = torch.cumsum(s**2, 0) / (s**2).sum()
    return int(torch.searchsorted(kept, torch.tensor(energy * (1 - 1e-7), device=kept.device)).item()) + 1


def rank_for_energy(layer: nn.Module, energy: float, input_scale: torch.Tensor | None = None) -> int:
    return rank_keeping(torch.linalg.svdvals(scaled_matrix(layer, input_scale)), energy)


@METHODS.register("svd")
class TruncatedSVD(CompressionMethod):
    """Truncated SVD: each linear/conv layer becomes two low-rank layers (real, smaller dense layers)."""

    category = "low-rank compression"
    action = "factorise"
    paper = (
        "Kaushal et al., LORD: Low Rank Decomposition of Monolingual Code LLMs, 2023; Denton et al., NeurIPS 2014; "
        "activation_aware: Yuan et al., ASVD, 2023"
    )
    Params = SVDParams

    def compress(self, model, layers, ctx):
        layers = [(n, m) for n, m in layers if not (isinstance(m, nn.Conv2d) and m.groups != 1)]  # depthwise: keep
        scales = {}
        if self.params.activation_aware:  # from the unfactorised model: every layer sees the original inputs
            scales = activation_scales(model, layers, ctx.batches(self.params.n_batches), self.params.alpha)
        self.ranks: dict[str, int] = {}  # factorised layer -> its rank
        for name, layer in layers:
            out_dim, in_dim = as_matrix(layer.weight).shape
            full, scale = min(out_dim, in_dim), scales.get(name)
            svd = None
            if self.params.rank:
                rank = min(self.params.rank, full)
            else:
                svd = svd_of(layer, scale)
                rank = rank_keeping(svd[1], self.params.energy)
            smaller = rank * (out_dim + in_dim) < out_dim * in_dim
            if rank < full and (self.params.rank or smaller):  # at full rank the layer is already exact
                model.set_submodule(name, factorise(layer, rank, scale, svd))
                self.ranks[name] = rank
        if not self.ranks:  # an unchanged model is no compression
            why = (
                f"every layer's full rank is at most {self.params.rank}"
                if self.params.rank
                else f"keeping {self.params.energy} of the spectrum makes no layer smaller"
            )
            raise HarnessError(f"method 'svd': no layer was factorised ({why}); lower rank or energy")

    def compression(self, model):
        return Compression(kernel="real")


@torch.no_grad()
def activation_scales(
    model: nn.Module, layers: list[tuple[str, nn.Module]], batches, alpha: float
) -> dict[str, torch.Tensor]:
    """ASVD's per-input-feature scale (mean |x_j|)^alpha of each layer over the calibration
    inputs, in the column order of `weight.reshape(out, -1)` (a conv's unfolded patch)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def observe(name, module, x):
        total, count = feature_sums(module, x, torch.abs)
        sums[name] = total + sums[name] if name in sums else total
        counts[name] = counts.get(name, 0) + count

    calibrate(model, layers, batches, observe, "svd")
    scales = {}
    for name, total in sums.items():
        scale = (total / counts[name]).pow(alpha)
        # A feature that was always zero carries no information: a tiny floor keeps S invertible
        # (as ASVD's code adds 1e-6) and lets the truncation spend nothing on it.
        scales[name] = scale.clamp_min(1e-6 * float(scale.max().clamp_min(1e-12)))
    return scales
