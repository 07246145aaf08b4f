"""torch's FlopCounterMode with the formulas it lacks, so that a count does not depend on
which kernel the device picked.

- Attention. torch counts SDPA's CUDA kernels but has no formula for the CPU fused kernel
  (`_scaled_dot_product_flash_attention_for_cpu`), so a CPU count left attention out, while
  SDPA's math path and eager attention are counted as their matmuls. Every SDPA kernel is
  counted here as those matmuls: forward, the scores Q K^T and the weighted sum P V (2*s_q*s_k*d
  each per head, query heads under grouped-query attention, as eager attention repeats K and
  V); backward, the gradients autograd needs and no more: dP and dV when anything upstream
  needs them, dQ and dK for the inputs that require a gradient. A fused kernel's
  recomputation of the scores in its backward is not counted, so SDPA and eager attention
  count the same on every device. Causal masks are not discounted (eager attention computes
  the full square too).
- torch's dynamic int8 linear (`quantized.linear_dynamic`), as one multiply-add per weight
  and input pair, as `aten.mm` counts.
"""

from __future__ import annotations

import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.measure.passes import autocast, loss_backward, unchanged, untraced_backward

aten = torch.ops.aten

_FORWARD = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)


def _matmul(b: int, m: int, k: int, n: int) -> int:
    return 2 * b * m * k * n


def _dims(query, key, value) -> tuple[int, int, int, int, int]:
    """(batch x query heads, s_q, s_k, d_qk, d_v) of SDPA's (batch, heads, seq, dim) inputs."""
    *lead, s_q, d_qk = query.shape
    s_k, d_v = key.shape[-2], value.shape[-1]
    return math.prod(lead), s_q, s_k, d_qk, d_v


def _attention_forward(query, key, value, *args, out_val=None, **kwargs) -> int:
    bh, s_q, s_k, d_qk, d_v = _dims(query, key, value)
    return _matmul(bh, s_q, d_qk, s_k) + _matmul(bh, s_q, s_k, d_v)


def _attention_backward(grad_out, query, key, value, *args, out_val=None, **kwargs) -> int:
    bh, s_q, s_k, d_qk, d_v = _dims(query, key, value)
    flops = 0
    if value.requires_grad:
        flops += _matmul(bh, s_k, s_q, d_v)  # dV = P^T dO
    if query.requires_grad or key.requires_grad:
        flops += _matmul(bh, s_q, d_v, s_k)  # dP = dO V^T
    if query.requires_grad:
        flops += _matmul(bh, s_q, s_k, d_qk)  # dQ = dS K
    if key.requires_grad:
        flops += _matmul(bh, s_k, s_q, d_qk)  # dK = dS^T Q
    return flops


# Raw formulas: they read the tensors themselves (which inputs require a gradient), not shapes.
_attention_forward._get_raw = True
_attention_backward._get_raw = True


def _quantized_linear_flops(input_shape, packed_weight, *args, out_shape=None, **kwargs) -> int:
    # (..., in) x (in, out): one multiply-add per pair.
    return 2 * math.prod(input_shape[:-1]) * input_shape[-1] * out_shape[-1]


def _mapping() -> dict:
    mapping = {}
    for name in _FORWARD:
        for op, formula in ((name, _attention_forward), (name + "_backward", _attention_backward)):
            if hasattr(aten, op):
                mapping[getattr(aten, op)] = formula
    if hasattr(torch.ops, "quantized") and hasattr(torch.ops.quantized, "linear_dynamic"):
        mapping[torch.ops.quantized.linear_dynamic] = _quantized_linear_flops
    return mapping


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_mapping())


def train_step_flops(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, precision: str
) -> int:
    """Operations of one forward and backward pass on `batch` (the optimizer's update is not
    counted), by FlopCounterMode with harness/measure/flops.py's formulas. Executed operations: a
    frozen weight's gradient is not computed, so it is not counted. The model is left
    exactly as it was (harness/measure/passes.py), so training afterwards is what it would have been."""
    with untraced_backward(model, device), flop_counter() as counter:
        loss_backward(model, batch, device, precision)
    return int(counter.get_total_flops())


def forward_flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor], device: torch.device, precision: str) -> int:
    """Floating-point (or integer) operations of one forward pass on `inputs`, counted by
    torch's FlopCounterMode from the operators that actually run (matmuls, convolutions,
    attention; harness/measure/flops.py): a model made smaller (SVD, channel pruning, token merging)
    counts less; a masked sparse model run by dense kernels counts the same as the dense model.
    The pass runs in eval mode; the model's modes and buffers are left as they were."""
    with unchanged(model):
        model.eval()
        with flop_counter() as counter, torch.inference_mode():
            with autocast(device, precision):
                model(**inputs)
    return int(counter.get_total_flops())
