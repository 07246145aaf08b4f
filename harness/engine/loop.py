"""A plain training loop (no Trainer) with meters.

Written by hand rather than with transformers' Trainer so that exactly the training
steps are timed (no evaluation, logging or checkpointing inside the timed region),
method hooks run at a known point, and the loop stays small enough to audit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from harness.core.errors import HarnessError
from harness.core.progress import bar
from harness.measure.memory import (
    MemoryBreakdown,
    PeakMemory,
    held_gradient_bytes,
    memory_breakdown,
    optimizer_state_bytes,
)

# Re-exported: the measuring passes live below the loop, so meters and profiling need not import it.
from harness.measure.passes import autocast, loss_backward, to_device, untraced_backward  # noqa: F401
from harness.measure.timing import Stopwatch
from harness.measure.train_flops import StepFlops
from harness.methods.base import MethodContext
from harness.methods.optim import default_optimizer, give_head_its_rate
from harness.methods.pipeline import Pipeline
from harness.suites.base import Prepared


@dataclass
class TrainStats:
    steps: int = 0
    samples: int = 0
    tokens: int = 0
    seconds: float = 0.0
    final_loss: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_reserved_bytes: int | None = None
    peak_memory_kind: str = ""
    peak_process_memory_bytes: int | None = None  # CPU: the whole process's peak resident set
    optimizer_state_bytes: int | None = None
    memory: MemoryBreakdown | None = None
    flops: int | None = None  # forward + backward of every micro-batch trained on (harness/measure/train_flops.py)

    @property
    def flops_per_step(self) -> float | None:
        return self.flops / self.steps if self.flops is not None and self.steps else None


def check_precision(precision: str, device: torch.device) -> None:
    """fp16 needs loss scaling, which the loop does with CUDA's GradScaler only: on another
    device small fp16 gradients would underflow to zero unnoticed."""
    if precision == "fp16" and device.type != "cuda":
        raise HarnessError(
            f"--precision fp16 on {device.type} has no loss scaling here (only on CUDA), so small "
            "gradients would underflow; use --precision bf16 or fp32"
        )


def total_steps(
    num_examples: int,
    batch_size: int,
    epochs: float,
    max_steps: int | None,
    grad_accum: int = 1,
    max_tokens: int | None = None,
    tokens_per_example: float | None = None,
) -> int:
    """Optimizer steps: --max-steps, else epochs over the data; a token budget caps either at
    the steps its tokens fill on average (training also stops when the budget is spent)."""
    if max_steps:
        steps = max_steps
    else:
        steps = max(1, math.ceil(epochs * math.ceil(num_examples / (batch_size * grad_accum))))
    if max_tokens and tokens_per_example:
        steps = min(steps, max(1, math.ceil(max_tokens / (tokens_per_example * batch_size * grad_accum))))
    return steps


def scored_tokens(batch: dict) -> int:
    """Tokens a causal-LM loss scores: labels other than -100 after the one-position shift."""
    return int((batch["labels"][..., 1:] != -100).sum())


def batch_tokens(batch: dict) -> int:
    """Non-padding input tokens of a batch (all of them when there is no attention mask, as in packing)."""
    mask = batch.get("attention_mask")
    if mask is not None:
        return int(mask.sum())
    return int(batch["input_ids"].numel()) if "input_ids" in batch else 0


def batch_examples(batch: dict) -> int:
    """Examples in a batch; a packed batch holds several in one row, each starting at position 0."""
    if "position_ids" in batch and "attention_mask" not in batch:
        return int((batch["position_ids"] == 0).sum())
    return len(next(iter(batch.values())))


def _forever(loader: DataLoader):
    while True:  # a new shuffle each epoch, drawn from the loader's seeded generator
        yield from loader


# Said when a run needs training examples and its suite has none for it (an lm-eval task with no
# training split, e.g. wikitext in the mirror).
NO_TRAINING_DATA = (
    "the method {what}, and this run has no training examples (the task has no training split here); "
    "give the suite training data, e.g. --set train_data=arc_easy (lm-eval tasks) or a hub data set id"
)


def first_batch(data: Prepared, batch_size: int) -> dict:
    """The first `batch_size` examples of a prepared split, collated: fixed measuring inputs."""
    return data.collate([data.dataset[i] for i in range(min(batch_size, len(data.dataset)))])


def sample_batches(data: Prepared, batch_size: int, n: int, seed: int):
    """n shuffled training batches (on CPU) for methods that calibrate or initialise from data."""
    if len(data.dataset) == 0:
        raise HarnessError(NO_TRAINING_DATA.format(what="calibrates or initialises from data"))
    loader = DataLoader(
        data.dataset,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=data.collate,
        generator=torch.Generator().manual_seed(seed + 1),
    )
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch


def build_optimizer(model: torch.nn.Module, pipeline: Pipeline, ctx: MethodContext) -> torch.optim.Optimizer:
    """The method's own optimizer (GaLore, LISA) if it brings one, else AdamW over what trains."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = pipeline.optimizer([p for _, p in named], ctx) or default_optimizer(named, ctx.lr, ctx.weight_decay)
    if ctx.head_lr is not None and ctx.head_modules:
        # A method's optimizer may also hold parameters frozen now (LISA's layers): every one counts.
        give_head_its_rate(optimizer, list(model.named_parameters()), ctx.head_modules, ctx.head_lr)
    return optimizer


def train(
    model: torch.nn.Module,
    data: Prepared,
    pipeline: Pipeline,
    ctx: MethodContext,
    *,
    batch_size: int,
    steps: int,
    warmup_ratio: float,
    max_grad_norm: float,
    precision: str,
    device: torch.device,
    seed: int,
    show_progress: bool = True,
    grad_accum: int = 1,
    lr_scheduler: str = "linear",
    max_tokens: int | None = None,
) -> TrainStats:
    """`steps` optimizer steps of `grad_accum` micro-batches of `batch_size` each (or fewer,
    when `max_tokens` non-padding tokens are spent first).

    A token-labelled loss (causal LM) is summed over the step's micro-batches and divided by
    the tokens it scores in all of them, so accumulating k batches of b gives the gradient of
    one batch of k*b. A per-example loss (classification) is the mean of the micro-batch
    means, which is the same for equal micro-batches."""
    from transformers import get_scheduler

    check_precision(precision, device)
    stats = TrainStats()
    if steps == 0 or not any(p.requires_grad for p in model.parameters()):
        return stats  # nothing to train (e.g. a compression-only method)
    optimizer = build_optimizer(model, pipeline, ctx)
    # Clip over what the optimizer updates: a method may train parameters frozen at the start (LISA).
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = get_scheduler(
        lr_scheduler, optimizer, num_warmup_steps=int(warmup_ratio * steps), num_training_steps=steps
    )
    batches = _forever(
        DataLoader(
            data.dataset,
            batch_size=batch_size,
            shuffle=True,
            collate_fn=data.collate,
            generator=torch.Generator().manual_seed(seed),
        )
    )
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    flops = StepFlops(model)
    # Gradients actually held, at the end of each step's backward passes (before zero_grad).
    held, held_bytes = list(model.parameters()), 0
    # Loss stays on the device and is read once at the end, so logging never forces a sync.
    tail_from = max(0, steps - max(1, steps // 10))
    tail_loss = torch.zeros((), device=device)
    tail_count = 0
    model.train()
    with bar("train", steps, show_progress) as progress, Stopwatch(device) as watch, PeakMemory(device) as memory:
        while stats.steps < steps and not (max_tokens and stats.tokens >= max_tokens):
            micro = [next(batches) for _ in range(grad_accum)]
            flops.start_step()
            scored = sum(scored_tokens(b) for b in micro) if data.token_labels else None
            step_loss = torch.zeros((), device=device)
            for batch in micro:
                flops.add(batch)
                stats.tokens += batch_tokens(batch)
                stats.samples += batch_examples(batch)
                batch = to_device(batch, device)
                with autocast(device, precision):
                    if scored is not None:  # the model's loss as a sum over tokens / scored
                        loss = model(**batch, num_items_in_batch=max(scored, 1)).loss
                    else:
                        loss = model(**batch).loss / grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
                step_loss += loss.detach().float()
            # A method's own term (SoRA's L1 on its gates), once per step; final_loss stays the task loss.
            extra = pipeline.extra_loss(model)
            if extra is not None:
                (scaler.scale(extra) if scaler else extra).backward()
            if scaler:
                scaler.unscale_(optimizer)
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            pipeline.on_step(stats.steps, model)
            scheduler.step()
            held_bytes = max(held_bytes, held_gradient_bytes(held))
            optimizer.zero_grad(set_to_none=True)
            if stats.steps >= tail_from:
                tail_loss += step_loss
                tail_count += 1
            stats.steps += 1
            progress.advance()
    stats.seconds = watch.seconds
    stats.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    stats.final_loss = float(tail_loss) / tail_count if tail_count else None
    stats.peak_memory_bytes = memory.peak_bytes
    stats.peak_memory_reserved_bytes = memory.reserved_bytes
    stats.peak_memory_kind = memory.kind
    stats.peak_process_memory_bytes = memory.process_peak_bytes
    stats.memory = memory_breakdown(model, held_bytes, stats.optimizer_state_bytes, memory.added_bytes)
    # Outside the timed and metered region: the batches that ran, counted once per distinct shape.
    stats.flops = flops.total(model, device, precision)
    return stats
