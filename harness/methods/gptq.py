"""GPTQ: post-training weight quantization from calibration data (Frantar et al., GPTQ:
Accurate Post-Training Quantization for Generative Pre-trained Transformers, ICLR 2023).

Per layer, GPTQ minimises the output error ||W X - Q X||² over calibration inputs X. With
H = 2 X Xᵀ (dampened by `damp` times its mean diagonal), it quantizes the weight matrix
column by column and spreads each column's rounding error over the columns not yet
quantized, weighted by the Cholesky factor of H⁻¹ (the paper's Algorithm 1): lazy batch
updates in blocks of 128 columns, so each error touches the rest of the matrix once per
block. Groups of `group_size` inputs of a row share an asymmetric min-max grid, found
when the group's first column is reached (from the weights as the error feedback has left
them), the same grid and storage as `int4`/`int8` (harness/methods/quantization.py).

Which variant: the reference's (IST-DASLab/gptq `llama_sequential`, without
`--true-sequential` or `--act-order`): block by block, each transformer block's layers
calibrated on inputs that went through the blocks before it already quantized, then
quantized before the next block is calibrated, so only one block's Hessians are held at a
time. Layers that read the same input (q, k and v) share one H, which the reference
computes once per layer (the same matrix). The reference keeps every sample's hidden
state between blocks; here each block's pass reruns the model from its input up to that
block (stopping there), which holds only a batch at a time and works for any block
signature, at the cost of about L/2 model passes for L blocks. Layers outside the block
list (a BERT pooler) form a group of their own after the blocks; a model without a block
list (a CNN) is calibrated in one pass.

Calibration data: the papers' 128 sequences x 2048 tokens = 262,144 tokens
(`calibration_tokens`; `--nsamples 128`, seqlen 2048 in the reference), as whole shuffled
batches of the task's training split until the budget is reached, or all the split has if
it holds fewer; the tokens used are in the row's pipeline_costs (`calibration_tokens` in
the step's notes). Padding positions are left out, as they never reach the output.

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

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, MethodParams
from harness.methods.compress import (
    PAPER_TOKENS,
    CompressionMethod,
    as_matrix,
    calibrate,
    calibration_set,
    input_rows,
)
from harness.methods.lisa import transformer_layers
from harness.methods.quantization import (
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


def gptq_quantize(
    weight: torch.Tensor, hessian: torch.Tensor, bits: int, group_size: int, damp: float = 0.01
) -> QuantizedMatrix:
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
        raise HarnessError(
            f"method 'gptq': a layer's input covariance is not positive definite after dampening by "
            f"{damp}; raise damp (e.g. gptq:damp=0.1)"
        ) from None

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


class SharedHessians:
    """H = 2/n Σ x xᵀ per distinct input of a group of layers: the layers that read the same
    input tensor in a pass (calibrate hands them the same object) share one accumulator and
    one H. Which layers share is fixed on the first batch and checked on every later one."""

    def __init__(self):
        self.slot_of: dict[str, int] = {}
        self.members: list[set[str]] = []
        self.sums: list[torch.Tensor] = []
        self.counts: list[int] = []
        self._pass: dict[int, set[int]] = {}  # slot -> ids of the inputs added in this pass
        self._hessians: dict[int, torch.Tensor] = {}

    def new_pass(self) -> None:
        self._pass = {}

    def observe(self, name: str, module: nn.Module, x: torch.Tensor) -> None:
        key = id(x)
        if name not in self.slot_of:  # first batch: join the slot that already holds this input
            slot = next((s for s, keys in self._pass.items() if key in keys), None)
            if slot is None:
                slot = len(self.sums)
                self.members.append(set())
                self.sums.append(None)
                self.counts.append(0)
            self.slot_of[name] = slot
            self.members[slot].add(name)
        slot = self.slot_of[name]
        keys = self._pass.setdefault(slot, set())
        if key in keys:
            return  # this input is already in the slot's sum (a layer sharing it came first)
        if keys and len(self.members[slot]) > 1:
            raise HarnessError(
                f"method 'gptq': layers {sorted(self.members[slot])} shared an input on the first "
                "calibration batch but not on a later one"
            )
        keys.add(key)
        rows = input_rows(module, x)
        product = rows.T @ rows
        self.sums[slot] = product if self.sums[slot] is None else self.sums[slot] + product
        self.counts[slot] += rows.shape[0]

    def __len__(self) -> int:
        return len(self.sums)  # Hessians alive at once

    def hessian(self, name: str) -> torch.Tensor:
        """The layer's H (the same tensor object for the layers sharing an input)."""
        slot = self.slot_of[name]
        if slot not in self._hessians:
            self._hessians[slot] = 2.0 * self.sums[slot] / self.counts[slot]
            self.sums[slot] = None  # the sum is not needed any more
        return self._hessians[slot]

    __getitem__ = hessian


def collect_hessians(
    model: nn.Module, layers: list[tuple[str, nn.Module]], batches, stop_after: nn.Module | None = None
) -> SharedHessians:
    """The shared Hessians of `layers` over the calibration batches (one pass per batch,
    ending after `stop_after` when given; padding positions left out)."""
    hessians = SharedHessians()

    def passes():
        for batch in batches:
            hessians.new_pass()
            yield batch

    calibrate(model, layers, passes(), hessians.observe, "gptq", stop_after=stop_after)
    return hessians


def calibration_groups(
    model: nn.Module, layers: list[tuple[str, nn.Module]]
) -> list[tuple[nn.Module | None, list[tuple[str, nn.Module]]]]:
    """`layers` in the order a sequential calibration takes them, as (block, its layers): the
    layers before the transformer's block list, then each block, then those after it (pooler,
    ...), the block being the module after which a pass may stop (None: run the whole model).
    A model without a block list (a CNN) is one group."""
    try:
        prefix, blocks = transformer_layers(model)
    except HarnessError:
        return [(None, list(layers))]
    names = [f"{prefix}.{i}" for i in range(len(blocks))]
    inside: list[list[tuple[str, nn.Module]]] = [[] for _ in blocks]
    before, after = [], []
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    first = order.get(names[0], 0) if names else 0
    for name, module in layers:
        index = next((i for i, b in enumerate(names) if name == b or name.startswith(b + ".")), None)
        if index is not None:
            inside[index].append((name, module))
        elif order.get(name, 0) < first:
            before.append((name, module))
        else:
            after.append((name, module))
    groups: list[tuple[nn.Module | None, list[tuple[str, nn.Module]]]] = []
    if before:
        groups.append((None, before))
    groups += [(blocks[i], group) for i, group in enumerate(inside) if group]
    if after:
        groups.append((None, after))
    return groups


class GptqParams(MethodParams):
    bits: Literal[2, 3, 4, 8] = Field(4, description="bits per weight")
    group_size: int = Field(
        128, ge=0, description="inputs sharing one scale and zero point; 0: one group per output channel"
    )
    damp: float = Field(0.01, gt=0, le=1, description="added to H's diagonal, as a share of its mean diagonal")
    # the papers' 128 x 2048 calibration tokens (IST-DASLab/gptq: --nsamples 128, seqlen 2048)
    calibration_tokens: int = Field(
        PAPER_TOKENS, ge=1, description="calibration tokens from the training split (all it has, if fewer)"
    )
    calibration_batches: int | None = Field(
        None, ge=1, description="exactly this many training batches instead of a token budget"
    )


@METHODS.register("gptq")
class Gptq(CompressionMethod):
    """GPTQ: weight-only quantization with second-order error feedback from calibration batches (simulated)."""

    category = "quantization"
    action = "quantize"
    quantizes = True  # a grid no later training or merge may leave; no requantize (its grid comes from calibration)
    version = 2  # sequential block by block, shared Hessians, the papers' calibration budget
    paper = (
        "Frantar et al., GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers, ICLR 2023"
    )
    Params = GptqParams

    def compress(self, model, layers, ctx):
        self.layers = layers
        p = self.params
        batches, tokens = calibration_set(ctx, p.calibration_tokens, p.calibration_batches)
        self.notes.update(calibration_tokens=tokens, calibration_batches=len(batches), max_live_hessians=0)
        for block, group in calibration_groups(model, self.layers):
            # inputs to this group pass through the groups before it, already quantized
            hessians = collect_hessians(model, group, batches, stop_after=block)
            self.notes["max_live_hessians"] = max(self.notes["max_live_hessians"], len(hessians))
            with torch.no_grad():
                for name, layer in group:
                    self.quantize_layer(layer, hessians.hessian(name))
            del hessians  # one group's Hessians at a time

    def quantize_layer(self, layer: nn.Module, hessian: torch.Tensor) -> None:
        p = self.params
        matrix = as_matrix(layer.weight)
        groups = getattr(layer, "groups", 1)  # a grouped conv's rows see only their group's inputs
        if groups == 1:
            quantized = gptq_quantize(matrix, hessian, p.bits, p.group_size, p.damp).values
        else:
            rows, cols = matrix.shape[0] // groups, matrix.shape[1]
            quantized = torch.cat(
                [
                    gptq_quantize(
                        matrix[g * rows : (g + 1) * rows],
                        hessian[g * cols : (g + 1) * cols, g * cols : (g + 1) * cols],
                        p.bits,
                        p.group_size,
                        p.damp,
                    ).values
                    for g in range(groups)
                ]
            )
        layer.weight.copy_(quantized.reshape(layer.weight.shape))

    def compression(self, model):
        return weight_only_compression(model, self.layers, self.params.bits, self.params.group_size)
