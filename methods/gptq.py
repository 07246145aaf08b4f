"""GPTQ: post-training weight quantization from calibration data (Frantar et al., GPTQ:
Accurate Post-Training Quantization for Generative Pre-trained Transformers, ICLR 2023).

Per layer, GPTQ minimises the output error ||W X - Q X||² over calibration inputs X. With
H = 2 X Xᵀ (dampened by `damp` times its mean diagonal), it quantizes the weight matrix
column by column and spreads each column's rounding error over the columns not yet
quantized, weighted by the Cholesky factor of H⁻¹ (the paper's Algorithm 1): lazy batch
updates in blocks of 128 columns, so each error touches the rest of the matrix once per
block. Groups of `group_size` inputs of a row share an asymmetric min-max grid, found
when the group's first column is reached (from the weights as the error feedback has left
them), the same grid and storage as `int4`/`int8` (methods/quantization.py).

Which variant: every layer's H comes from one pass of the calibration batches through
the model as it is when `apply` runs (all layers see the unquantized model's
activations), not the paper's sequential one (each layer calibrated on the outputs of
the already quantized layers before it). No act-order. Calibration tokens are those of
`ctx.batches(calibration_batches)` from the task's training split; padding positions
are left out, as they never reach the output.

Hand-written: the maintained GPTQ libraries (auto-gptq, gptqmodel) need CUDA and target
causal LMs; this is the reference algorithm (IST-DASLab/gptq) for any linear or 2-D
convolution layer on any device. Inference runs the dequantized float weights
(`compression_kernel=simulated`).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from pydantic import Field
from torch import nn

from harness.compress import as_matrix, calibrate, compressible_layers, input_rows
from harness.errors import HarnessError
from harness.method import METHODS, Method, MethodParams, freeze_all_but
from methods.quantization import (
    groups_per_row,
    minmax_grid,
    round_to_grid,
    weight_only_compression,
)

BLOCK_COLUMNS = 128  # lazy-batch width (the paper's B); the result does not depend on it


class QuantizedMatrix(NamedTuple):
    values: torch.Tensor  # (rows, cols), dequantized: every entry is (k - zero) * step of its group
    step: torch.Tensor  # (rows, groups)
    zero: torch.Tensor  # (rows, groups), integers in [0, 2^bits - 1]


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, damp: float = 0.01) -> QuantizedMatrix:
    """GPTQ of a (rows, cols) weight matrix against H = 2 X Xᵀ, (cols, cols); float32 throughout.

    An input that never varied in calibration (zero diagonal in H) would make H singular:
    the reference sets its diagonal to 1 and zeroes its weights; here its weights are only
    rounded to nearest (with that diagonal, it neither passes nor receives error), since an
    input silent in calibration may not be silent at evaluation.
    """
    W = weight.detach().float().clone()
    rows, cols = W.shape
    H = hessian.detach().float().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damp * H.diagonal().mean())
    try:
        # the upper Cholesky factor of H⁻¹: row i holds column i's error weights on columns i..
        U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    except torch.linalg.LinAlgError:
        raise HarnessError(f"method 'gptq': a layer's input covariance is not positive definite after dampening by "
                           f"{damp}; raise damp (e.g. gptq:damp=0.1)") from None

    levels = 2**bits - 1
    size = cols if group_size == 0 else group_size
    n_groups = groups_per_row(cols, group_size)
    steps = torch.empty(rows, n_groups, device=W.device)
    zeros = torch.empty(rows, n_groups, device=W.device)
    Q = torch.empty_like(W)
    # A block holds whole groups, so that a group's grid is found from fully updated weights.
    width = size * -(-BLOCK_COLUMNS // size) if group_size else BLOCK_COLUMNS
    for start in range(0, cols, width):
        end = min(start + width, cols)
        block = W[:, start:end].clone()
        errors = torch.empty_like(block)
        U_block = U[start:end, start:end]
        for i in range(end - start):
            column = start + i
            if column % size == 0:  # a group starts (per row: once, from the whole row)
                g = column // size
                step, zero = minmax_grid(block[:, i : i + size] if group_size else W, levels)
                steps[:, g], zeros[:, g] = step[:, 0], zero[:, 0]
            w = block[:, i]
            q = round_to_grid(w.unsqueeze(1), step, zero, levels)[:, 0]
            Q[:, column] = q
            errors[:, i] = (w - q) / U_block[i, i]
            block[:, i:].addr_(errors[:, i], U_block[i, i:], alpha=-1)  # the error, spread on the block's later columns
        W[:, end:] -= errors @ U[start:end, end:]  # the block's errors, once, on every later column
    return QuantizedMatrix(Q, steps, zeros)


@torch.no_grad()
def collect_hessians(model: nn.Module, layers: list[tuple[str, nn.Module]], batches) -> dict[str, torch.Tensor]:
    """H = 2/n Σ x xᵀ over every calibration token's input to each layer (one forward pass
    per batch through `model`; padding positions, per the batch's attention mask, left out)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def observe(name, module, x):
        rows = input_rows(module, x)
        product = rows.T @ rows
        sums[name] = product + sums[name] if name in sums else product
        counts[name] = counts.get(name, 0) + rows.shape[0]

    calibrate(model, layers, batches, observe, "gptq")
    return {name: 2.0 * sums[name] / counts[name] for name in sums}


class GptqParams(MethodParams):
    bits: Literal[2, 3, 4, 8] = Field(4, description="bits per weight")
    group_size: int = Field(128, ge=0, description="inputs sharing one scale and zero point; 0: one group per output channel")
    damp: float = Field(0.01, gt=0, le=1, description="added to H's diagonal, as a share of its mean diagonal")
    calibration_batches: int = Field(16, ge=1, description="training batches whose inputs calibrate every layer")


@METHODS.register("gptq")
class Gptq(Method):
    """GPTQ: weight-only quantization with second-order error feedback from calibration batches (simulated)."""

    name = "gptq"
    category = "quantization"
    compresses = True
    paper = "Frantar et al., GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers, ICLR 2023"
    Params = GptqParams

    def apply(self, model, ctx):
        self.layers = compressible_layers(model, ctx.uncompressed_modules)
        if not self.layers:
            raise HarnessError(f"method {self.name!r}: the model has no linear or convolution layer to quantize")
        p = self.params
        hessians = collect_hessians(model, self.layers, ctx.batches(p.calibration_batches))
        with torch.no_grad():
            for name, layer in self.layers:
                matrix = as_matrix(layer.weight)
                groups = getattr(layer, "groups", 1)  # a grouped conv's rows see only their group's inputs
                rows, cols = matrix.shape[0] // groups, matrix.shape[1]
                quantized = torch.cat([
                    gptq_quantize(matrix[g * rows : (g + 1) * rows],
                                  hessians[name][g * cols : (g + 1) * cols, g * cols : (g + 1) * cols],
                                  p.bits, p.group_size, p.damp).values
                    for g in range(groups)
                ])
                layer.weight.copy_(quantized.reshape(layer.weight.shape))
                del hessians[name]
        freeze_all_but(model)  # compression alone trains nothing; a later pipeline step decides what trains
        return model

    def compression(self, model):
        return weight_only_compression(model, self.layers, self.params.bits, self.params.group_size)
