"""Weight pruning: unstructured magnitude, semi-structured 2:4, and Wanda.

All three prune the weights of the linear and 2-D convolution layers outside the task
head, then freeze every parameter (`harness.methods.compress.CompressionMethod`).

Pruned weights stay zero through later fine-tuning: each method keeps a boolean mask
per pruned layer and re-zeroes the pruned entries in `on_step`, which the training loop
calls right after every `optimizer.step()` (so no update, momentum or weight decay can
leave a pruned entry non-zero at any step's end, nor at the end of training), and once
more in `finalize`. This is the simplest correct choice: it leaves the module, its
state dict and any later wrapping (peft keeps the same layer object as `base_layer`)
untouched, where a parametrization would rename the weight and break peft's merge. A
later step that adds a dense delta on top (LoRA, merged with `merge=true`) makes the
merged weight dense again; `compression()` then counts what is really non-zero, and
the measured `weight_sparsity` says so too.

No sparse kernel runs here: the pruned model is a masked dense model on CPU, so every
row says `compression_kernel=simulated`. (torch's `to_sparse_semi_structured` 2:4
kernels need a CUDA Ampere+ GPU and fp16/bf16 weights; they are not wired in.)
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, Compression, MethodParams
from harness.methods.compress import (
    PAPER_TOKENS,
    CompressionMethod,
    as_matrix,
    calibration_set,
    dense_bytes_except,
    input_feature_norms,
)

Layer = tuple[str, nn.Module]


# Masks ---------------------------------------------------------------------------------


def prune_lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask (same shape) that prunes exactly the k lowest scores of a flat ranking.

    A stable sort breaks ties deterministically: among equal scores the lower flat index
    is pruned first."""
    flat = scores.reshape(-1)
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        keep[torch.argsort(flat, stable=True)[:k]] = False
    return keep.reshape(scores.shape)


def prune_lowest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask for a (rows, cols) score matrix pruning the k lowest of each row (stable ties)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        order = torch.argsort(scores, dim=1, stable=True)[:, :k]
        keep.scatter_(1, order, False)
    return keep


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest magnitudes in every group of 4 consecutive inputs of each output row."""
    matrix = as_matrix(weight.detach()).abs()
    groups = matrix.reshape(matrix.shape[0], -1, 4)
    order = torch.argsort(groups, dim=2, stable=True)[:, :, :2]  # the 2 smallest of each group
    keep = torch.ones_like(groups, dtype=torch.bool).scatter_(2, order, False)
    return keep.reshape(weight.shape)


def is_two_four(weight: torch.Tensor) -> bool:
    """At most 2 non-zeros in every group of 4 consecutive inputs."""
    matrix = as_matrix(weight.detach())
    if matrix.shape[1] % 4:
        return False
    return bool(((matrix.reshape(matrix.shape[0], -1, 4) != 0).sum(dim=2) <= 2).all())


# Base ----------------------------------------------------------------------------------


class SparsityParams(MethodParams):
    sparsity: float = Field(
        0.5, ge=0.0, lt=1.0, description="share of each pruned layer's weights set to zero, 0 <= s < 1"
    )


class _Pruning(CompressionMethod):
    category = "pruning"
    action = "prune"
    Params = SparsityParams
    default_lr = 0.0  # pruning alone trains nothing; a later adaptation step brings its own rate
    default_lr_source = "none: pruning trains nothing; a later adaptation step brings its own rate"

    def compress(self, model, layers, ctx):
        masks = self.masks_for(model, layers, ctx)
        self.masks: list[tuple[str, nn.Module, torch.Tensor]] = [(n, m, masks[n]) for n, m in layers if n in masks]
        self.reapply()

    def masks_for(self, model: nn.Module, layers: list[Layer], ctx) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def reapply(self) -> None:
        """Zero the pruned entries again (the mask follows the weight to its device once)."""
        for i, (name, module, mask) in enumerate(self.masks):
            if mask.device != module.weight.device:
                mask = mask.to(module.weight.device)
                self.masks[i] = (name, module, mask)
            module.weight.mul_(mask)

    def on_step(self, step, model):
        self.reapply()  # called right after optimizer.step(): updates never revive a pruned weight

    def finalize(self, model):
        self.reapply()
        return model

    def pruned_layers(self) -> list[Layer]:
        return [(n, m) for n, m, _ in self.masks]

    def compression(self, model):
        # Unstructured sparse storage (a bitmap format): per pruned layer, the non-zero
        # values at the weight's own width plus a 1-bit mask per weight:
        #     bytes = nnz * element_size + ceil(numel / 8)
        # Counted from the final weights, so a later dense delta (a merged adapter) is
        # paid for. Every other parameter and buffer at its dense size.
        stored = dense_bytes_except(model, self.pruned_layers())
        for _, module, _ in self.masks:
            w = module.weight
            stored += int((w != 0).sum()) * w.element_size() + -(-w.numel() // 8)
        return Compression(weight_bits=None, kernel="simulated", compressed_bytes=stored)


# Methods -------------------------------------------------------------------------------


class MagnitudeParams(SparsityParams):
    scope: Literal["layer", "global"] = Field(
        "layer", description="layer: every pruned layer reaches the sparsity; global: one threshold over all of them"
    )


@METHODS.register("magnitude")
class MagnitudePruning(_Pruning):
    """Magnitude pruning: zero the smallest |w| of linear and conv layers (unstructured, per layer or global)."""

    paper = "Han et al., Learning both Weights and Connections for Efficient Neural Networks, NeurIPS 2015"
    Params = MagnitudeParams

    def masks_for(self, model, layers, ctx):
        s = self.params.sparsity
        if self.params.scope == "layer":
            # exactly round(s * numel) zeros in each layer
            return {n: prune_lowest(m.weight.detach().abs(), round(s * m.weight.numel())) for n, m in layers}
        # global: one ranking over all pruned weights, exactly round(s * total) zeros in all
        scores = torch.cat([m.weight.detach().abs().reshape(-1).float() for _, m in layers])
        keep = prune_lowest(scores, round(s * scores.numel()))
        masks, start = {}, 0
        for n, m in layers:
            masks[n] = keep[start : start + m.weight.numel()].reshape(m.weight.shape)
            start += m.weight.numel()
        return masks


@METHODS.register("two-four")
class TwoFourPruning(_Pruning):
    """2:4 semi-structured pruning: keep the 2 largest |w| in every 4 consecutive inputs (simulated, masked dense)."""

    paper = "Mishra et al., Accelerating Sparse Deep Neural Networks, arXiv 2021 (NVIDIA Ampere 2:4 sparsity)"
    Params = MethodParams  # the pattern fixes the sparsity at 50%

    def masks_for(self, model, layers, ctx):
        # Groups run along the flattened input (in_features; in_channels/groups * kh * kw for
        # a convolution). A layer whose input size is not divisible by 4 cannot hold the
        # pattern and is left dense: e.g. ResNet-20's first conv has 3*3*3 = 27 inputs.
        masks = {n: two_four_mask(m.weight) for n, m in layers if as_matrix(m.weight).shape[1] % 4 == 0}
        if not masks:
            raise HarnessError(f"method {self.name!r}: no prunable layer has an input size divisible by 4")
        return masks

    def compression(self, model):
        # 2:4 storage (as NVIDIA's sparse tensor cores keep it): per pruned layer, the kept
        # half of the values at the weight's width plus a 2-bit position index per kept value:
        #     bytes = numel/2 * element_size + numel/2 * 2 / 8
        # A layer that lost the pattern (a merged dense delta) is counted dense. Every
        # other parameter and buffer at its dense size.
        stored = dense_bytes_except(model, self.pruned_layers())
        for _, module, _ in self.masks:
            w = module.weight
            if is_two_four(w):
                stored += (w.numel() // 2) * w.element_size() + (w.numel() // 2) * 2 // 8
            else:
                stored += w.numel() * w.element_size()
        return Compression(weight_bits=None, kernel="simulated", compressed_bytes=stored)


class WandaParams(SparsityParams):
    # the paper's 128 x 2048 calibration tokens (locuslab/wanda: --nsamples 128, seqlen 2048 for LLaMA)
    calibration_tokens: int = Field(
        PAPER_TOKENS, ge=1, description="calibration tokens from the training split (all it has, if fewer)"
    )
    n_batches: int | None = Field(
        None, ge=1, description="exactly this many training batches instead of a token budget"
    )


@METHODS.register("wanda")
class Wanda(_Pruning):
    """Wanda: prune by |W| * ||X|| (input-activation norm), per output row, from calibration batches."""

    paper = "Sun et al., A Simple and Effective Pruning Approach for Large Language Models, ICLR 2024"
    Params = WandaParams
    version = 2  # the paper's calibration budget

    def masks_for(self, model, layers, ctx):
        # One pass of the dense model for every layer (the reference prunes block by block, each
        # block calibrated on the pruned blocks before it); the tokens used go to the row.
        batches, tokens = calibration_set(ctx, self.params.calibration_tokens, self.params.n_batches)
        self.notes.update(calibration_tokens=tokens, calibration_batches=len(batches))
        norms = input_feature_norms(model, layers, batches, self.name)
        masks = {}
        for n, m in layers:
            w = as_matrix(m.weight.detach()).abs().float()
            feature_norm = norms[n]
            groups = getattr(m, "groups", 1)
            if groups > 1:  # a grouped conv's output row sees only its group's input features
                feature_norm = feature_norm.reshape(groups, -1).repeat_interleave(w.shape[0] // groups, dim=0)
            scores = w * feature_norm  # (out, in) * (in,) or (out, in): |W_ij| * ||X_j||_2
            # per output row: each row keeps the top (1 - s) of its inputs, as the paper
            masks[n] = prune_lowest_per_row(scores, round(self.params.sparsity * w.shape[1])).reshape(m.weight.shape)
        return masks
