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
- `gptq` (methods/gptq.py) puts its weights on the same grid and shares the byte
  accounting (`weight_only_compression`); `nf4` (methods/nf4.py) is QLoRA's 4-bit format.
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness.compress import as_matrix, compressible_layers, dense_bytes_except
from harness.errors import HarnessError
from harness.meters import device_of
from harness.method import METHODS, Compression, Method, MethodParams, freeze_all_but

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


def weight_only_compression(model: torch.nn.Module, layers: list, bits: int, group_size: int) -> Compression:
    """Size of a groupwise weight-only format (RTN or GPTQ alike): per quantized layer the
    `bits`-bit codes plus, per group, a float16 scale and a `bits`-bit zero point; every
    other parameter and buffer at its dense size. Simulated: the weights were dequantized."""
    quantized = sum(layer.weight.numel() for _, layer in layers)
    groups = sum(layer.weight.shape[0] * groups_per_row(as_matrix(layer.weight).shape[1], group_size) for _, layer in layers)
    overhead_bits = groups * (SCALE_BITS + bits)  # a scale and a zero point per group
    stored = dense_bytes_except(model, layers) + (quantized * bits + overhead_bits) // 8
    return Compression(weight_bits=bits + overhead_bits / quantized, kernel="simulated", compressed_bytes=stored)


class WeightOnlyParams(MethodParams):
    group_size: int = Field(128, ge=0, description="inputs sharing one scale and zero point; 0: one group per output channel")


class _WeightOnly(Method):
    category = "quantization"
    compresses = True
    paper = "Frantar et al., GPTQ, ICLR 2023 and Lin et al., AWQ, MLSys 2024 (round-to-nearest weight-only baseline)"
    Params = WeightOnlyParams
    bits = 8

    def apply(self, model, ctx):
        self.layers = compressible_layers(model, ctx.uncompressed_modules)
        if not self.layers:
            raise HarnessError(f"method {self.name!r}: the model has no linear or convolution layer to quantize")
        with torch.no_grad():
            for _, layer in self.layers:
                layer.weight.copy_(fake_quantize(layer.weight, self.bits, self.params.group_size))
        freeze_all_but(model)  # compression alone trains nothing; a later pipeline step decides what trains
        return model

    def compression(self, model):
        return weight_only_compression(model, self.layers, self.bits, self.params.group_size)


@METHODS.register("int8")
class Int8WeightOnly(_WeightOnly):
    """int8 weight-only quantization, groupwise min-max (simulated: dequantized float kernel)."""

    name = "int8"
    bits = 8


@METHODS.register("int4")
class Int4WeightOnly(_WeightOnly):
    """int4 weight-only quantization, groupwise min-max (simulated: dequantized float kernel)."""

    name = "int4"
    bits = 4


@METHODS.register("int8-dynamic")
class Int8Dynamic(Method):
    """int8 dynamic quantization of linear layers with torch's quantized CPU kernels (real)."""

    name = "int8-dynamic"
    category = "quantization"
    compresses = True
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
                per_channel = weight.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                                                   torch.per_channel_affine_float_qparams)
                packed += weight.numel() * weight.element_size() + 8 * (weight.shape[0] if per_channel else 1)
                if bias is not None:
                    packed += bias.numel() * bias.element_size()
        return Compression(weight_bits=8.0, kernel="real", compressed_bytes=dense_bytes_except(model, []) + packed)
