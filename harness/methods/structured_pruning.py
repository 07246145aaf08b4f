"""Structured pruning: remove whole channels, FFN neurons and attention heads, so that the
dense model really gets smaller (fewer parameters, fewer FLOPs, a faster dense kernel).

A prunable *group* is a set of units (conv channels, FFN neurons, attention heads) made
by some producer layers (their output rows) and read by one consumer layer (its input
columns), with only per-unit elementwise work in between. Removing a unit deletes its
producer rows, its entries in any batch norm between, and its consumer columns; nothing
outside the group changes shape, so residual widths stay as they are.

Groups are found by module names and shapes, so the supported models are listed here:

- CNNs with the torchvision / CIFAR ResNet convention: inside one module, children
  `conv{k}` -> `bn{k}` -> `conv{k+1}` (plain Conv2d, groups=1, BatchNorm2d). In a CIFAR
  ResNet-20 basic block that is conv1 -> bn1 -> conv2: conv1's output channels go; the
  block's output width is tied to the residual and stays.
- Transformer FFNs: BERT-style `intermediate.dense` -> `output.dense` (BERT, RoBERTa,
  MiniLM) and `mlp.fc1` -> `mlp.fc2` (ViT and CLIP in transformers 5). Gated FFNs
  (LLaMA's gate/up/down) are not recognised.
- Attention heads (`heads` > 0): BERT-style `attention.self.{query,key,value}` ->
  `attention.output.dense`, and `{q,k,v}_proj` -> `o_proj` modules with a `head_dim`
  (ViT in transformers 5; LLaMA-style attention with as many key/value heads as query
  heads has the same layout). Grouped-query attention is not pruned. transformers 5
  dropped `prune_heads`, so heads are sliced here: the attention modules reshape with -1
  heads and a fixed head size, and their `num_attention_heads` (and `all_head_size`) are
  set to the kept count.

Layers must be plain nn.Linear / nn.Conv2d (not peft-wrapped or quantized), and the
module holding an FFN or attention's projections may hold no other parameters (a norm
over all heads, per-head sinks, a LayerNorm inside an `mlp`): such a group is skipped. A
forward that does anything but per-unit elementwise work between a producer and its
consumer (a second reader of `conv1`'s output) cannot be seen from the modules and is not
supported. The new layers are plain nn.Linear / nn.Conv2d / nn.BatchNorm2d, so a later
step (LoRA, full fine-tuning) wraps them like any other.

The config stays honest where one number can describe the model: `intermediate_size` is
set to the kept FFN width (every layer keeps the same count). `num_attention_heads` is left
as it is, because transformers derives the head size from it; the kept head count is on
each attention module. A head-pruned model is therefore not rebuilt by `from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from harness.core.errors import HarnessError
from harness.measure.size import model_bytes
from harness.methods.base import METHODS, Compression, MethodParams
from harness.methods.compress import CompressionMethod, as_matrix, conv_like, in_head, input_feature_norms


@dataclass(frozen=True)
class PrunableGroup:
    """Units made by `producers` (output rows), read by `consumer` (input columns)."""

    kind: str  # "channel", "neuron" or "head": which of the method's sparsities applies
    producers: tuple[str, ...]
    consumer: str
    between: tuple[str, ...] = ()  # per-unit modules sliced alike (BatchNorm2d)
    unit_size: int = 1  # rows/columns per unit: 1, or the head size
    owner: str | None = None  # attention module whose head-count attributes follow the pruning


# Finding groups ------------------------------------------------------------------------


def _plain(module: nn.Module | None, kind: type) -> bool:
    # Exact types: a peft wrapper or a quantized layer has other weights to slice.
    return module is not None and type(module) is kind


def _child(module: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if not isinstance(module, nn.Module):
            return None
    return module


def _holds_only(module: nn.Module | None, children: tuple[str, ...]) -> bool:
    """Every parameter of `module` lies in one of the named children. A module whose other
    parameters may act on the units (a norm over all heads, per-head sinks) is left alone."""
    return module is not None and all(name.split(".")[0] in children for name, _ in module.named_parameters())


def _conv_chains(path: str, module: nn.Module) -> list[PrunableGroup]:
    groups, k = [], 1
    while (conv := _child(module, f"conv{k}")) is not None:
        bn, nxt = _child(module, f"bn{k}"), _child(module, f"conv{k + 1}")
        if (
            _plain(conv, nn.Conv2d)
            and _plain(bn, nn.BatchNorm2d)
            and _plain(nxt, nn.Conv2d)
            and conv.groups == 1
            and nxt.groups == 1
            and conv.out_channels == bn.num_features == nxt.in_channels
        ):
            groups.append(PrunableGroup("channel", (f"{path}conv{k}",), f"{path}conv{k + 1}", (f"{path}bn{k}",)))
        k += 1
    return groups


FFN_PAIRS = (("intermediate.dense", "output.dense"), ("fc1", "fc2"))


def _ffn(path: str, module: nn.Module) -> list[PrunableGroup]:
    for up_name, down_name in FFN_PAIRS:
        up, down = _child(module, up_name), _child(module, down_name)
        # BERT's `intermediate` holds only its dense layer; ViT's `mlp` only fc1 and fc2
        parent, own = (_child(module, "intermediate"), ("dense",)) if "." in up_name else (module, (up_name, down_name))
        if (
            _plain(up, nn.Linear)
            and _plain(down, nn.Linear)
            and up.out_features == down.in_features
            and _holds_only(parent, own)
        ):
            return [PrunableGroup("neuron", (path + up_name,), path + down_name)]
    return []


def _heads(path: str, module: nn.Module) -> list[PrunableGroup]:
    attn = _child(module, "self")
    if attn is not None and hasattr(attn, "attention_head_size") and _holds_only(attn, ("query", "key", "value")):
        # BERT-style: attention.self holds query/key/value and the head counts; attention.output.dense mixes the heads
        names, consumer, owner, size = (
            ("self.query", "self.key", "self.value"),
            "output.dense",
            "self",
            attn.attention_head_size,
        )
    elif hasattr(module, "head_dim") and _holds_only(module, ("q_proj", "k_proj", "v_proj", "o_proj")):
        # one module holds q/k/v/o_proj and the head counts (ViT in transformers 5)
        names, consumer, owner, size = ("q_proj", "k_proj", "v_proj"), "o_proj", "", module.head_dim
    else:
        return []
    projections, out = [_child(module, n) for n in names], _child(module, consumer)
    if not all(_plain(p, nn.Linear) for p in (*projections, out)):
        return []
    if len({p.out_features for p in projections} | {out.in_features}) != 1:  # grouped-query attention: not pruned
        return []
    return [
        PrunableGroup(
            "head", tuple(path + n for n in names), path + consumer, unit_size=size, owner=(path + owner).rstrip(".")
        )
    ]


def find_groups(model: nn.Module, head_modules: tuple[str, ...] = ()) -> list[PrunableGroup]:
    """Every prunable group of the model, outside the task head, in module order."""
    groups = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        for group in _conv_chains(prefix, module) + _ffn(prefix, module) + _heads(prefix, module):
            if not any(in_head(n, head_modules) for n in (*group.producers, group.consumer)):
                groups.append(group)
    return groups


# Scoring -------------------------------------------------------------------------------


def l1_scores(model: nn.Module, group: PrunableGroup) -> torch.Tensor:
    """Li et al. 2017: a unit's importance is the sum of |w| of the producer weights that make it
    (a conv filter; an FFN neuron's input row; a head's query, key and value rows)."""
    total = None
    for name in group.producers:
        rows = as_matrix(model.get_submodule(name).weight.detach()).abs().float().sum(dim=1)
        per_unit = rows.reshape(-1, group.unit_size).sum(dim=1)
        total = per_unit if total is None else total + per_unit
    return total


def activation_scores(model: nn.Module, group: PrunableGroup, column_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's |W_ij| * ||X_j||_2 (Sun et al., ICLR 2024), summed over the consumer weights that
    removing a unit deletes: the structured form of Wanda that An et al. (FLAP, AAAI 2024)
    compare against. `column_norms` are the consumer's input-feature norms, per weight column."""
    weight = as_matrix(model.get_submodule(group.consumer).weight.detach()).abs().float()
    per_column = (weight * column_norms.to(weight.device)).sum(dim=0)
    return per_column.reshape(-1, per_column.numel() // _units(model, group)).sum(dim=1)


def _units(model: nn.Module, group: PrunableGroup) -> int:
    return model.get_submodule(group.producers[0]).weight.shape[0] // group.unit_size


def consumer_column_norms(model: nn.Module, consumers: list[str], batches) -> dict[str, torch.Tensor]:
    """L2 norm of each input feature of each consumer over all calibration positions, ordered as
    the columns of `weight.reshape(out, -1)` (a conv's unfolded patch, zero padding included)."""
    return input_feature_norms(model, [(n, model.get_submodule(n)) for n in consumers], batches, "channel")


def units_to_keep(scores: torch.Tensor, share_removed: float) -> torch.Tensor:
    """Indices (ascending) of the units kept: the round(share * n) lowest scores go, at least one
    stays. A stable sort breaks ties deterministically: the lower index goes first."""
    n = scores.numel()
    removed = min(round(share_removed * n), n - 1)
    order = torch.argsort(scores.cpu(), stable=True)
    return torch.sort(order[removed:]).values


# Slicing -------------------------------------------------------------------------------


def _rows(keep: torch.Tensor, unit_size: int) -> torch.Tensor:
    return (keep[:, None] * unit_size + torch.arange(unit_size)).reshape(-1)


def _sliced_layer(layer: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Module:
    """A plain copy of a Linear/Conv2d keeping the given output rows and/or input columns."""
    weight = layer.weight.detach()
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    has_bias = layer.bias is not None
    like = dict(device=weight.device, dtype=weight.dtype)
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, **like)
    else:
        new = conv_like(layer, weight.shape[1], weight.shape[0], has_bias, **like)
    with torch.no_grad():
        new.weight.copy_(weight)
        if has_bias:
            bias = layer.bias.detach()
            new.bias.copy_(bias.index_select(0, rows.to(bias.device)) if rows is not None else bias)
    return new.train(layer.training)


def _sliced_norm(norm: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    like = norm.weight if norm.weight is not None else norm.running_mean
    new = nn.BatchNorm2d(
        len(keep),
        eps=norm.eps,
        momentum=norm.momentum,
        affine=norm.affine,
        track_running_stats=norm.track_running_stats,
        device=like.device,
        dtype=like.dtype,
    )
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            old = getattr(norm, name)
            if old is not None:
                getattr(new, name).copy_(old.index_select(0, keep.to(old.device)))
        if norm.num_batches_tracked is not None:
            new.num_batches_tracked.copy_(norm.num_batches_tracked)
    return new.train(norm.training)


def remove_units(model: nn.Module, group: PrunableGroup, keep: torch.Tensor) -> None:
    """Replace the group's layers by smaller ones holding only the kept units."""
    rows = _rows(keep, group.unit_size)
    for name in group.producers:
        model.set_submodule(name, _sliced_layer(model.get_submodule(name), rows=rows))
    for name in group.between:
        model.set_submodule(name, _sliced_norm(model.get_submodule(name), keep))
    consumer = model.get_submodule(group.consumer)
    model.set_submodule(group.consumer, _sliced_layer(consumer, cols=rows))
    if group.owner is not None:
        owner = model.get_submodule(group.owner)
        owner.num_attention_heads = len(keep)
        if hasattr(owner, "all_head_size"):
            owner.all_head_size = len(keep) * group.unit_size


# Method --------------------------------------------------------------------------------


class ChannelParams(MethodParams):
    sparsity: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="share of each group's channels / FFN neurons removed, 0 <= s < 1 (at least one kept)",
    )
    heads: float = Field(
        0.0, ge=0.0, lt=1.0, description="share of each attention layer's heads removed, 0 <= s < 1 (at least one kept)"
    )
    importance: Literal["l1", "activation"] = Field(
        "l1",
        description="l1: sum |w| of the unit's producer weights (Li et al. 2017); activation: Wanda's |W|*||X|| summed over the unit's consumer weights (calibration batches)",
    )
    n_batches: int = Field(8, ge=1, description="calibration batches for importance=activation")


@METHODS.register("channel")
class ChannelPruning(CompressionMethod):
    """Structured pruning: remove conv channels, FFN neurons and attention heads (a smaller dense model, real speed)."""

    category = "structured pruning"
    paper = "Li et al., Pruning Filters for Efficient ConvNets, ICLR 2017"
    Params = ChannelParams
    default_lr = 0.0  # pruning alone trains nothing; a later adaptation step brings its own rate
    default_lr_source = "none: pruning trains nothing; a later adaptation step brings its own rate"

    def targets(self, model, ctx) -> list[PrunableGroup]:
        """The prunable groups outside the head; none (or no heads where heads > 0) is bad input."""
        p = self.params
        found = find_groups(model, ctx.uncompressed_modules)
        groups = [g for g in found if g.kind != "head" or p.heads > 0]
        if not groups:
            wrapped = any(hasattr(m, "base_layer") for m in model.modules())
            hint = (
                "its layers are wrapped by an adapter; put channel before it or merge it first (merge=true)"
                if wrapped
                else "supported: ResNet conv{k}->bn{k}->conv{k+1} blocks, BERT/ViT FFNs and attention heads"
            )
            raise HarnessError(f"method 'channel': found nothing to prune in {type(model).__name__} ({hint})")
        if p.heads > 0 and not any(g.kind == "head" for g in groups):
            raise HarnessError(
                f"method 'channel': heads={p.heads} but {type(model).__name__} has no attention whose heads it can prune; use heads=0"
            )
        return groups

    def compress(self, model, groups, ctx):
        p = self.params
        share = {"channel": p.sparsity, "neuron": p.sparsity, "head": p.heads}
        if p.importance == "activation":
            norms = consumer_column_norms(model, [g.consumer for g in groups], ctx.batches(p.n_batches))
            scores = [activation_scores(model, g, norms[g.consumer]) for g in groups]
        else:
            scores = [l1_scores(model, g) for g in groups]
        self.kept: dict[str, int] = {}  # consumer -> units kept
        for group, score in zip(groups, scores):  # all scores first: they come from the unpruned model
            keep = units_to_keep(score, share[group.kind])
            self.kept[group.consumer] = len(keep)
            if len(keep) < score.numel():
                remove_units(model, group, keep)
        self._update_config(model, groups)

    def _update_config(self, model: nn.Module, groups: list[PrunableGroup]) -> None:
        config = getattr(model, "config", None)
        widths = {self.kept[g.consumer] for g in groups if g.kind == "neuron"}
        if config is not None and hasattr(config, "intermediate_size") and len(widths) == 1:
            config.intermediate_size = widths.pop()

    def compression(self, model):
        # A smaller dense model in full precision: stored as it sits in memory, run by the
        # ordinary dense kernels (the speed is real).
        return Compression(weight_bits=None, kernel="real", compressed_bytes=model_bytes(model))
