"""Quantization of the weights.

- `int8-dynamic`: torch's dynamic quantization (Jacob et al., CVPR 2018 scheme): int8
  weights and per-batch int8 activations in linear layers, run by torch's quantized CPU
  kernels (fbgemm/x86): a real low-precision kernel, CPU only.
- `int8`, `int4` (weight-only, groupwise, asymmetric min-max; as the weight-only baselines
  of GPTQ and AWQ): here the weights are quantized and dequantized back to float, so
  accuracy is exactly that of the low-precision weights while inference runs the dense
  float kernel. Rows say so (`compression_kernel=simulated`); a measured speedup is
  never claimed for them. No real weight-only kernel is wired in: torchao 0.18 (for
  torch 2.13) has no CPU int4 path and runs its CPU int8 weight-only layers as a float
  matmul on dequantized weights; torch's own `_weight_int4pack_mm_for_cpu` would fit.
- `gptq` (harness/methods/gptq.py) puts its weights on the same grid and shares the byte
  accounting (`weight_only_compression`); `nf4` (methods/nf4.py) is QLoRA's 4-bit format.
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness.core.errors import HarnessError
from harness.measure.size import model_bytes
from harness.measure.timing import device_of
from harness.methods.base import METHODS, Compression, Method, MethodParams, freeze_all_but
from harness.methods.compress import CompressionMethod, as_matrix, compressible_layers, dense_bytes_except

SCALE_BITS = 16  # a group's scale is stored as float16


def minmax_grid(block: torch.Tensor, levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The asymmetric min-max grid of each row of `block`: its step and integer zero point,
    so that the grid points are (k - zero) * step for k = 0 .. levels (= 2^bits - 1)."""
    low = block.amin(dim=1, keepdim=True)
    high = block.amax(dim=1, keepdim=True)
    step = ((high - low) / levels).clamp(min=torch.finfo(torch.float32).tiny)
    zero = torch.round(-low / step)
    return step, zero


def round_to_grid(values: torch.Tensor, step: torch.Tensor, zero: torch.Tensor, levels: int) -> torch.Tensor:
    """The nearest grid point of each value (values outside the grid's range clamp to its ends)."""
    q = torch.clamp(torch.round(values / step) + zero, 0, levels)
    return (q - zero) * step


def fake_quantize(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Asymmetric min-max quantization per group of `group_size` inputs of each output row
    (0 = one group per row), dequantized back to the weight's dtype.

    Each element's error is at most half a step, step = (max - min) / (2^bits - 1) of its
    group. A last, shorter group is quantized on its own (no padding enters its range).
    """
    matrix = as_matrix(weight.detach()).float()
    cols = matrix.shape[1]
    size = cols if group_size == 0 else group_size
    levels = 2**bits - 1
    out = torch.empty_like(matrix)
    for start in range(0, cols, size):
        block = matrix[:, start : start + size]
        step, zero = minmax_grid(block, levels)
        out[:, start : start + size] = round_to_grid(block, step, zero, levels)
    return out.reshape(weight.shape).to(weight.dtype)


def groups_per_row(cols: int, group_size: int) -> int:
    return 1 if group_size == 0 else -(-cols // group_size)


def _most_distinct_per_row(blocks: torch.Tensor) -> int:
    ordered = blocks.sort(dim=1).values
    return int((1 + (ordered[:, 1:] != ordered[:, :-1]).sum(dim=1)).max())


@torch.no_grad()
def most_distinct_per_group(values: torch.Tensor, group_size: int) -> int:
    """The most distinct values in any group of `group_size` consecutive entries of a row of
    the 2-D `values` (0: each row is one group; a last, shorter group counts on its own)."""
    cols = values.shape[1]
    size = cols if group_size == 0 else min(group_size, cols)
    full = cols // size * size
    most = _most_distinct_per_row(values[:, :full].reshape(-1, size)) if full else 0
    if full < cols:
        most = max(most, _most_distinct_per_row(values[:, full:]))
    return most


def _groups(values: torch.Tensor, group_size: int) -> list[torch.Tensor]:
    """The groups of `group_size` consecutive entries of each row, as the rows of 2-D blocks."""
    cols = values.shape[1]
    size = cols if group_size == 0 else min(group_size, cols)
    full = cols // size * size
    blocks = [values[:, :full].reshape(-1, size)] if full else []
    return blocks + ([values[:, full:]] if full < cols else [])


def _on_uniform_grid(block: torch.Tensor, levels: int, tolerance: float) -> bool:
    """Every row's values an integer number of one step s above the row's minimum, spanning at
    most `levels` steps. The step divides every gap between the row's distinct values, so it
    is its smallest gap g over some whole m, with m * span / g <= levels: the candidates are
    tried in turn (rows that use two neighbouring grid points settle at m = 1)."""
    ordered = block.double().sort(dim=1).values
    offsets = ordered - ordered[:, :1]
    span = offsets[:, -1]
    gaps = offsets.diff(dim=1)
    smallest = torch.where(gaps > 0, gaps, torch.inf).amin(dim=1)
    settled = span == 0  # one value: on any grid
    most = torch.where(settled, 0.0, torch.floor((levels + tolerance) * smallest / span.clamp(min=1e-300)))
    pending = ~settled & (most >= 1)
    m = 1
    while pending.any():
        rows = pending.nonzero().squeeze(1)
        steps = offsets[rows] / (smallest[rows] / m).unsqueeze(1)
        fits = ((steps - steps.round()).abs() <= tolerance).all(dim=1)
        settled[rows[fits]] = True
        pending[rows[fits]] = False
        m += 1
        pending &= most >= m
    return bool(settled.all())


def _on_code(block: torch.Tensor, code: torch.Tensor, tolerance: float) -> bool:
    """Every row a code point times the row's absolute maximum (blockwise absmax formats: NF4)."""
    block = block.double()
    absmax = block.abs().amax(dim=1, keepdim=True)
    scaled = torch.where(absmax > 0, block / absmax, 0.0)
    distance = (scaled.unsqueeze(-1) - code.double().to(block.device)).abs().amin(dim=-1)
    return bool((distance <= tolerance).all())


@torch.no_grad()
def on_grid(values: torch.Tensor, bits: int, group_size: int, code: torch.Tensor | None = None) -> bool:
    """Whether the 2-D `values` are what a `bits`-bit format with one grid per group of
    `group_size` consecutive entries of a row (0: per row) can hold: at most 2^bits distinct
    values per group, and these on the group's grid: the integer multiples of one step that
    min-max formats (int4, int8, GPTQ) use, or with `code`, the code points times the group's
    absmax (NF4). Weights that training or a merged update moved after quantization fail it.

    The tolerance covers the rounding of dequantized values to the weights' dtype; in bf16 an
    8-bit grid is finer than the dtype itself, and the check then says little."""
    if most_distinct_per_group(values, group_size) > 2**bits:
        return False
    eps = torch.finfo(values.dtype).eps if values.is_floating_point() else 0.0
    levels = 2**bits - 1
    for block in _groups(values, group_size):
        if code is None and not _on_uniform_grid(block, levels, 1e-3 + 4 * levels * levels * eps):
            return False
        if code is not None and not _on_code(block, code, 1e-4 + 4 * eps):
            return False
    return True


def layers_in(model: torch.nn.Module, layers: list) -> list:
    """The (name, layer) pairs whose layer is still part of the model (a later step may have
    replaced some, e.g. factorised them): a replaced layer's weights are no longer in this format."""
    present = {id(m) for m in model.modules()}
    return [(name, layer) for name, layer in layers if id(layer) in present]


def dense_compression(model: torch.nn.Module) -> Compression:
    """What a row says when the quantized format no longer describes the final weights (they
    left the grid): no bits, no kernel, the model at its dense stored size."""
    return Compression(weight_bits=None, kernel=None, compressed_bytes=model_bytes(model))


def weight_only_compression(model: torch.nn.Module, layers: list, bits: int, group_size: int) -> Compression:
    """Size of a groupwise weight-only format (RTN or GPTQ alike): per quantized layer the
    `bits`-bit codes plus, per group, a float16 scale and a `bits`-bit zero point; every
    other parameter and persistent buffer at its dense stored size. Simulated: the weights
    were dequantized. Only if every quantized layer is still in the model and on its grid;
    otherwise the format is gone and the row says so (`dense_compression`)."""
    layers = layers_in(model, layers)
    if not layers or not all(on_grid(as_matrix(layer.weight), bits, group_size) for _, layer in layers):
        return dense_compression(model)
    quantized = sum(layer.weight.numel() for _, layer in layers)
    groups = sum(
        layer.weight.shape[0] * groups_per_row(as_matrix(layer.weight).shape[1], group_size) for _, layer in layers
    )
    overhead_bits = groups * (SCALE_BITS + bits)  # a scale and a zero point per group
    stored = (
        model_bytes(model, without_weights_of=[layer for _, layer in layers]) + (quantized * bits + overhead_bits) // 8
    )
    return Compression(weight_bits=bits + overhead_bits / quantized, kernel="simulated", compressed_bytes=stored)


class WeightOnlyParams(MethodParams):
    group_size: int = Field(
        128, ge=0, description="inputs sharing one scale and zero point; 0: one group per output channel"
    )


class _WeightOnly(CompressionMethod):
    category = "quantization"
    action = "quantize"
    quantizes = True
    can_requantize = True
    paper = "Frantar et al., GPTQ, ICLR 2023 and Lin et al., AWQ, MLSys 2024 (round-to-nearest weight-only baseline)"
    Params = WeightOnlyParams
    bits = 8

    def compress(self, model, layers, ctx):
        self.layers = layers
        self.requantize(model)

    @torch.no_grad()
    def requantize(self, model):
        for _, layer in layers_in(model, self.layers):
            layer.weight.copy_(fake_quantize(layer.weight, self.bits, self.params.group_size))
        return model

    def compression(self, model):
        return weight_only_compression(model, self.layers, self.bits, self.params.group_size)


@METHODS.register("int8")
class Int8WeightOnly(_WeightOnly):
    """int8 weight-only quantization, groupwise min-max (simulated: dequantized float kernel)."""

    bits = 8


@METHODS.register("int4")
class Int4WeightOnly(_WeightOnly):
    """int4 weight-only quantization, groupwise min-max (simulated: dequantized float kernel)."""

    bits = 4


@METHODS.register("int8-dynamic")
class Int8Dynamic(Method):
    """int8 dynamic quantization of linear layers with torch's quantized CPU kernels (real)."""

    category = "quantization"
    compresses = True
    quantizes = True
    must_be_last = True  # its quantized modules have no weights a later step could train or compress
    default_lr = 0.0
    default_lr_source = "none: quantization trains nothing"
    paper = "Jacob et al., Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference, CVPR 2018"

    keep: tuple[str, ...] = ()

    def apply(self, model, ctx):
        self.keep = ctx.uncompressed_modules
        freeze_all_but(model)  # a quantized model is not trained further
        return model

    def linear_layers(self, model) -> list[str]:
        """The linear layers to quantize: all but the head and the suite's dense modules (a tied
        output layer among them, which torch's module swap cannot split from its embedding)."""
        return [name for name, m in compressible_layers(model, self.keep) if isinstance(m, torch.nn.Linear)]

    def preflight(self, model, ctx):
        if device_of(model).type != "cpu":
            raise HarnessError("method 'int8-dynamic' runs torch's quantized CPU kernels; use --device cpu")
        if ctx is not None:
            self.keep = ctx.uncompressed_modules
        if not self.linear_layers(model):
            raise HarnessError("method 'int8-dynamic': the model has no linear layer outside its head")

    def finalize(self, model):
        import warnings

        from torch.ao.quantization import quantize_dynamic

        self.preflight(model, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own deprecation notice for its quantized tensors
            return quantize_dynamic(model, set(self.linear_layers(model)), dtype=torch.qint8)

    def compression(self, model):
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        # A quantized linear keeps its weight and its float bias in `_packed_params`, outside
        # model.parameters(): int8 values, a float32 scale and an int32 zero point per tensor
        # (quantize_dynamic's default) or per output row (per-channel schemes), and the bias.
        packed = 0
        for module in model.modules():
            if isinstance(module, DynamicLinear):
                weight, bias = module.weight(), module.bias()
                per_channel = weight.qscheme() in (
                    torch.per_channel_affine,
                    torch.per_channel_symmetric,
                    torch.per_channel_affine_float_qparams,
                )
                packed += weight.numel() * weight.element_size() + 8 * (weight.shape[0] if per_channel else 1)
                if bias is not None:
                    packed += bias.numel() * bias.element_size()
        return Compression(weight_bits=8.0, kernel="real", compressed_bytes=dense_bytes_except(model, []) + packed)
