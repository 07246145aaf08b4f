"""Forward and backward passes run to measure a model (FLOP counts, kernel profiles), and the
guard that makes them leave no trace.

A measured pass must not change what is later trained or evaluated: train-mode forwards
update batch-norm running statistics, dropout draws from the random state, backward
accumulates gradients. `unchanged` copies every persistent buffer (what `state_dict` holds
besides parameters: small, e.g. batch-norm statistics) and puts it back afterwards, and
restores each module's train/eval mode. Parameters and non-persistent buffers (NOLA's
regenerable bases) are not copied, since a copy of every weight would double the model's
memory; an in-place write to one of them is detected by its version counter and raised.
Version counters miss writes made inside fused kernels (batch norm's running statistics do
not bump them), which is why buffers are copied back unconditionally.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def loss_backward(model: torch.nn.Module, batch: dict, device: torch.device, precision: str) -> None:
    with autocast(device, precision):
        loss = model(**batch).loss
    loss.backward()


def _buffers(model: torch.nn.Module):
    """(name, tensor, persistent) for every buffer, a shared one once."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        for name, buffer in module._buffers.items():
            if buffer is None or id(buffer) in seen:
                continue
            seen.add(id(buffer))
            yield f"{prefix}.{name}" if prefix else name, buffer, name not in module._non_persistent_buffers_set


@contextmanager
def unchanged(model: torch.nn.Module):
    """The model leaves the block as it entered: buffers, parameters and modes."""
    modes = [(module, module.training) for module in model.modules()]
    params = list(model.named_parameters())
    param_versions = [p._version for _, p in params]
    buffers = list(_buffers(model))
    versions = [b._version for _, b, _ in buffers]
    saved = {name: b.detach().clone() for name, b, persistent in buffers if persistent}
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for name, buffer, persistent in buffers:
                if persistent:
                    buffer.copy_(saved[name])
    moved = [name for (name, p), v in zip(params, param_versions) if p._version != v]
    moved += [name for (name, b, persistent), v in zip(buffers, versions) if not persistent and b._version != v]
    if moved:
        raise RuntimeError(
            f"a measuring pass wrote to {', '.join(moved)}, which cannot be restored; "
            "the model's forward must not modify its weights"
        )


@contextmanager
def untraced_backward(model: torch.nn.Module, device: torch.device):
    """Forward and backward passes that leave no trace on training: the model is `unchanged`,
    the random state is restored (dropout), and gradients the parameters held before are put
    back (the passes' own are dropped)."""
    params = list(model.parameters())
    grads = [p.grad for p in params]
    for p in params:
        p.grad = None  # backward would otherwise accumulate into the held gradients
    try:
        with unchanged(model), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        for p, grad in zip(params, grads):
            p.grad = grad
