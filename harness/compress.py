"""Shared pieces of the compression methods: which layers they touch, and sizes.

Compression applies to the weights of linear and 2-D convolution layers outside the
task head (a fresh or tiny head is kept at full precision, as is usual).
"""

from __future__ import annotations

import torch
from torch import nn

COMPRESSIBLE = (nn.Linear, nn.Conv2d)


def compressible_layers(model: nn.Module, head_modules: tuple[str, ...] = ()) -> list[tuple[str, nn.Module]]:
    def in_head(name: str) -> bool:
        return any(name == h or name.startswith(h + ".") or f".{h}." in f".{name}." for h in head_modules)

    return [(n, m) for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE) and not in_head(n)]


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as (out, in): convolutions flatten (in, kh, kw)."""
    return weight.reshape(weight.shape[0], -1)


def dense_bytes_except(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> int:
    """Bytes of every parameter and buffer except the weights of `layers`."""
    skip = {id(m.weight) for _, m in layers}
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in skip]
    return sum(t.numel() * t.element_size() for t in tensors)
