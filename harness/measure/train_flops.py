"""FLOPs of the training steps that actually ran, not the first batch times the steps.

With dynamic padding (or packing) batches differ in length, and a method that switches the
trained layers (LISA) changes which weight gradients are computed, so each micro-batch is
keyed by its tensors' shapes and dtypes and by which parameters required a gradient when it
ran. The loop only records keys (cheap, inside the timed region); after it, each distinct key
is counted once by FlopCounterMode on a batch that had it, with the trainable set it had, and
multiplied by how often it occurred. The cost is one untimed forward and backward per
distinct key: a few dozen for padded text, one or two for images, about one per step for
packed sequences, whose every batch has its own length.

What is counted is what ran (executed FLOPs): a frozen weight's gradient is not computed,
so a parameter-efficient method counts less backward work than full fine-tuning.

Limit: state a method changes between steps other than the trainable set is not in the key.
DyLoRA samples its training rank each step, so its adapter's share (about r*(in+out) of a
layer's in*out) is counted at the rank it ended with.
"""

from __future__ import annotations

from collections import Counter

import torch

from harness.measure.flops import train_step_flops
from harness.measure.passes import to_device


def batch_signature(batch: dict) -> tuple:
    """What a batch's FLOPs depend on: each tensor's shape and dtype; other values as given."""
    return tuple(
        sorted(
            (key, (tuple(value.shape), str(value.dtype)) if torch.is_tensor(value) else repr(value))
            for key, value in batch.items()
        )
    )


class StepFlops:
    """Records each micro-batch the loop trained on; `total` counts them afterwards."""

    def __init__(self, model: torch.nn.Module):
        self.params = list(model.parameters())
        self.counts: Counter = Counter()
        self.examples: dict[tuple, dict] = {}
        self._trainable: dict[tuple[bool, ...], int] = {}
        self._current = 0

    def start_step(self) -> None:
        """Before a step's micro-batches: note which parameters train now."""
        flags = tuple(p.requires_grad for p in self.params)
        self._current = self._trainable.setdefault(flags, len(self._trainable))

    def add(self, batch: dict) -> None:
        key = (batch_signature(batch), self._current)
        self.counts[key] += 1
        self.examples.setdefault(key, batch)  # on the host: moved to the device only when counted

    def total(self, model: torch.nn.Module, device: torch.device, precision: str) -> int:
        flag_sets = {index: flags for flags, index in self._trainable.items()}
        now = [p.requires_grad for p in self.params]
        flops = 0
        try:
            for key, count in self.counts.items():
                for p, flag in zip(self.params, flag_sets[key[1]]):
                    p.requires_grad_(flag)
                flops += count * train_step_flops(model, to_device(self.examples[key], device), device, precision)
        finally:
            for p, flag in zip(self.params, now):
                p.requires_grad_(flag)
        return flops
