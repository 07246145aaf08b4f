"""Shared pieces of the compression methods: their base class, which layers they touch,
calibration, and sizes.

Compression applies to the weights of linear and 2-D convolution layers outside the
task head (a fresh or tiny head is kept at full precision, as is usual).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.errors import HarnessError
from harness.measure.timing import device_of
from harness.methods.base import Method, MethodContext, freeze_all_but
from harness.methods.optim import in_head

COMPRESSIBLE = (nn.Linear, nn.Conv2d)


def compressible_layers(model: nn.Module, head_modules: tuple[str, ...] = ()) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, COMPRESSIBLE) and not in_head(n, head_modules)]


class CompressionMethod(Method):
    """Base of the compression steps: find what to compress (`targets`; none is bad input),
    `compress` it, then freeze every parameter. Compression alone trains nothing; a later
    pipeline step (`magnitude+full`, `wanda+lora`) sets `requires_grad` as it needs, since
    the pipeline applies steps left to right."""

    compresses = True
    # Compression alone trains nothing; a later adaptation step brings its own rate.
    default_lr = 0.0
    default_lr_source = "none: compression trains nothing; a later adaptation step brings its own rate"
    action: ClassVar[str] = "compress"  # the verb of the refusal: "... no linear or convolution layer to prune"

    def apply(self, model: nn.Module, ctx: MethodContext) -> nn.Module:
        self.compress(model, self.targets(model, ctx), ctx)
        freeze_all_but(model)
        return model

    def targets(self, model: nn.Module, ctx: MethodContext) -> Any:
        """The linear and convolution layers outside the task head and the suite's dense modules."""
        layers = compressible_layers(model, ctx.uncompressed_modules)
        if not layers:
            raise HarnessError(f"method {self.name!r}: the model has no linear or convolution layer to {self.action}")
        return layers

    def compress(self, model: nn.Module, targets: Any, ctx: MethodContext) -> None:
        """Change `model` in place (swapping sub-modules is fine): quantize, prune, factorise."""
        raise NotImplementedError


def conv_like(layer: nn.Conv2d, in_channels: int, out_channels: int, bias: bool, **factory) -> nn.Conv2d:
    """An ungrouped convolution with `layer`'s kernel, stride, padding and dilation and new
    channel counts (a sliced or factorised copy of it)."""
    return nn.Conv2d(
        in_channels,
        out_channels,
        layer.kernel_size,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=1,
        bias=bias,
        padding_mode=layer.padding_mode,
        **factory,
    )


def as_matrix(weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as (out, in): convolutions flatten (in, kh, kw)."""
    return weight.reshape(weight.shape[0], -1)


def dense_bytes_except(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> int:
    """Bytes of every parameter and buffer except the weights of `layers`."""
    skip = {id(m.weight) for _, m in layers}
    tensors = [t for t in list(model.parameters()) + list(model.buffers()) if id(t) not in skip]
    return sum(t.numel() * t.element_size() for t in tensors)


# Calibration ---------------------------------------------------------------------------
# Wanda, GPTQ, activation-aware SVD and activation-scored channel pruning all read what each
# layer's weight multiplies: its inputs, as feature vectors in the column order of
# `as_matrix(weight)`. One forward pass per training batch, seen through pre-hooks.


def check_unfoldable(module: nn.Module, name: str, method: str) -> None:
    """Unfolding reproduces a convolution's input patches for explicit zero padding only."""
    if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        raise HarnessError(
            f"method {method!r}: conv layer {name!r} has padding {module.padding!r}/{module.padding_mode!r}; "
            "calibration supports explicit zero padding only"
        )


def _unfold(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The vectors a layer multiplies by its weight rows, one per token or output position, as
    (n, features): a convolution's are its unfolded input patches (channel, kh, kw)."""
    if isinstance(module, nn.Conv2d):
        patches = _unfold(module, x)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    return x.reshape(-1, x.shape[-1])


def feature_sums(module: nn.Module, x: torch.Tensor, elementwise) -> tuple[torch.Tensor, int]:
    """(Σ over positions of elementwise(x) per input feature, number of positions). For a
    convolution, unfolding only copies elements (and pads zeros), so it commutes with an
    elementwise map that keeps zero at zero and with summing over the batch: the batch's sum
    is unfolded once instead of every image."""
    values = elementwise(x)
    if isinstance(module, nn.Conv2d):
        cols = _unfold(module, values.sum(dim=0, keepdim=True))
        return cols.sum(dim=(0, 2)), x.shape[0] * cols.shape[2]
    flat = values.reshape(-1, values.shape[-1])
    return flat.sum(dim=0), flat.shape[0]


class _StopForward(Exception):
    """Raised after the last module a calibration pass needs: the rest of the model is not run."""


@torch.no_grad()
def calibrate(
    model: nn.Module,
    layers: list[tuple[str, nn.Module]],
    batches,
    observe,
    method: str,
    stop_after: nn.Module | None = None,
) -> None:
    """Run `batches` through `model` (eval mode: batch-norm running statistics, no dropout, as
    inference; no labels; on the model's device) and call observe(name, module, x) with every
    input to each of `layers`, as float. Token inputs (batch, seq, features) lose their padding
    positions per the batch's attention mask and arrive as (tokens, features).

    Layers called on the same input tensor in a pass (a block's q, k and v) receive the same
    `x` object, so an observer can compute one statistic for all of them. With `stop_after`,
    each pass ends once that module has run (the layers after it are not needed)."""
    for name, module in layers:
        check_unfoldable(module, name, method)
    mask: list[torch.Tensor | None] = [None]
    converted: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(raw input) -> (raw, x), this pass
    seen: set[str] = set()

    def hook_for(name: str):
        def hook(module, args):
            raw = args[0]
            if id(raw) in converted:
                x = converted[id(raw)][1]
            else:
                x = raw.detach().float()
                if mask[0] is not None and x.dim() == 3 and x.shape[:2] == mask[0].shape:
                    x = x[mask[0]]
                converted[id(raw)] = (raw, x)  # the raw tensor is held, so its id is not reused in this pass
            seen.add(name)
            observe(name, module, x)

        return hook

    def stop(module, args, output):
        raise _StopForward

    handles = [module.register_forward_pre_hook(hook_for(name)) for name, module in layers]
    if stop_after is not None:
        handles.append(stop_after.register_forward_hook(stop))
    was_training = model.training
    model.eval()
    device = device_of(model)
    try:
        for batch in batches:
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
            attention = inputs.get("attention_mask")
            mask[0] = attention.bool() if torch.is_tensor(attention) and attention.dim() == 2 else None
            converted.clear()
            try:
                model(**inputs)
            except _StopForward:
                pass
            converted.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [name for name, _ in layers if name not in seen]
    if missing:
        raise HarnessError(f"method {method!r}: no calibration input reached layer(s) {', '.join(missing[:3])}")


def input_feature_norms(
    model: nn.Module, layers: list[tuple[str, nn.Module]], batches, method: str
) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of each layer over every calibration token or position."""
    sums: dict[str, torch.Tensor] = {}

    def observe(name, module, x):
        total, _ = feature_sums(module, x, torch.square)
        sums[name] = total if name not in sums else sums[name] + total

    calibrate(model, layers, batches, observe, method)
    return {name: total.sqrt() for name, total in sums.items()}


# Calibration budget ----------------------------------------------------------------------
# Wanda (Sun et al., ICLR 2024) and GPTQ (Frantar et al., ICLR 2023) calibrate on 128
# sequences of 2048 tokens: `--nsamples 128` with model.seqlen = 2048 in IST-DASLab/gptq
# llama.py and locuslab/wanda main.py.
PAPER_SAMPLES = 128
PAPER_SEQUENCE = 2048
PAPER_TOKENS = PAPER_SAMPLES * PAPER_SEQUENCE  # 262,144


def calibration_units(batch: dict) -> int:
    """What a batch adds to a calibration budget: its non-padding tokens (all of input_ids
    without a mask); for inputs without tokens (images), PAPER_SEQUENCE per example, so the
    token budget means the papers' 128 samples there."""
    mask = batch.get("attention_mask")
    if torch.is_tensor(mask):
        return int(mask.sum())
    ids = batch.get("input_ids")
    if torch.is_tensor(ids):
        return int(ids.numel())
    return PAPER_SEQUENCE * len(next(iter(batch.values())))


def calibration_set(ctx, tokens: int, batches: int | None = None) -> tuple[list[dict], int]:
    """The calibration batches and the tokens they hold: whole training batches in the job's
    seeded shuffled order until at least `tokens` (see calibration_units), or all the split
    has if it holds fewer; exactly `batches` batches instead when that is given. Kept in a
    list (CPU), so that a sequential calibration can run them more than once."""
    chosen, total = [], 0
    for batch in ctx.batches(batches if batches is not None else 2**62):
        if batches is None and total >= tokens:
            break
        chosen.append(batch)
        total += calibration_units(batch)
    if not chosen:
        raise HarnessError("calibration needs training examples, but the training split has none")
    return chosen, total
