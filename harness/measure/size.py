"""Sizes of a model: parameters (trainable, stored), bytes in a checkpoint and in memory, sparsity."""

from __future__ import annotations

from typing import Iterable

import torch


def parameter_numel(param: torch.Tensor) -> int:
    """The weights a parameter stands for: a bitsandbytes 4-bit `Params4bit` packs two codes
    per uint8 element into shape (n/2, 1) and keeps the weight's true shape in its
    `quant_state`; every other tensor is its own numel."""
    state = getattr(param, "quant_state", None)
    if state is not None and not param.is_floating_point() and getattr(state, "shape", None) is not None:
        return int(torch.Size(state.shape).numel())
    return param.numel()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; `parameters()` yields a shared (tied) tensor once. A
    packed 4-bit weight counts the weights it holds, not its bytes."""
    params = list(model.parameters())
    return sum(parameter_numel(p) for p in params if p.requires_grad), sum(parameter_numel(p) for p in params)


def stored_parameter_count(model: torch.nn.Module) -> int:
    """Parameters of the final model, counting the packed weights (and biases) of torch's
    quantized modules too: they are not `nn.Parameter`s, but they are what the model stores."""
    _, total = count_parameters(model)
    for module in model.modules():
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            total += module.weight().numel() + (bias.numel() if bias is not None else 0)
    return total


def _tensors(value):
    """The tensors in a state-dict value (torch's packed quantized params are a tuple)."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _unique_bytes(tensors) -> int:
    seen: set[tuple[int, int]] = set()
    size = 0
    for tensor in tensors:
        if tensor.numel() == 0:
            continue
        key = (tensor.data_ptr(), tensor.numel())  # a tied (shared) tensor once
        if key in seen:
            continue
        seen.add(key)
        size += tensor.numel() * tensor.element_size()
    return size


def model_bytes(model: torch.nn.Module, without_weights_of: Iterable[torch.nn.Module] = ()) -> int:
    """Bytes a checkpoint of the model holds: its `state_dict`, i.e. parameters, persistent
    buffers (batch-norm statistics) and what quantized modules store in their place (torch's
    packed int8 weights with scales and zero points, a bitsandbytes weight's packed codes and
    quantization state), shared tensors once. Non-persistent buffers (NOLA's bases, drawn
    again from a seed) are not stored, so they are not counted (see `model_memory_bytes`).

    `without_weights_of`: modules whose weight (and its quantization state) is left out, for a
    compression step that prices those weights in its own format."""
    skip = {id(m) for m in without_weights_of}
    prefixes = [f"{name}." if name else "" for name, m in model.named_modules(remove_duplicate=False) if id(m) in skip]

    def kept(key: str) -> bool:
        return not any(key == p + "weight" or key.startswith(p + "weight.") for p in prefixes)

    state = model.state_dict(keep_vars=True)
    return _unique_bytes(t for key, value in state.items() if kept(key) for t in _tensors(value))


def model_memory_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers as they sit in memory, non-persistent
    buffers included (shared tensors once)."""
    return _unique_bytes(list(model.parameters()) + list(model.buffers()))


def trainable_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def _dense_weight(weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as numbers: a bitsandbytes 4-bit weight (packed uint8 codes) dequantized."""
    state = getattr(weight, "quant_state", None)
    if state is not None and not weight.is_floating_point():
        import bitsandbytes.functional as bnb_functional

        return bnb_functional.dequantize_4bit(weight.data, state)
    return weight


@torch.no_grad()
def weight_sparsity(model: torch.nn.Module) -> float | None:
    """Share of exactly-zero entries in the weights of linear and convolution layers (a
    bitsandbytes 4-bit layer's weights dequantized, not its packed bytes)."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            weight = _dense_weight(module.weight)
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else None
