"""Inference costs of the final model: forward latency and FLOPs, and for generative models
time to first token and generation throughput. Every timing is a percentile over repeats
after warm-up (`measure_latency`), on fixed evaluation inputs, so methods compare."""

from __future__ import annotations

from typing import Any

import torch

from harness.measure.meters import forward_flops, measure_latency
from harness.measure.passes import autocast, to_device


def forward_latency(model: torch.nn.Module, data, run, device: torch.device) -> dict[str, Any]:
    """Forward latency at batch size 1 and at the eval batch size, and FLOPs per example."""
    n = min(run.eval_batch_size, len(data.dataset))
    examples = [data.dataset[i] for i in range(n)]
    result: dict[str, Any] = {
        "latency_batch_size": n,
        "latency_repeats": run.latency_repeats,
        "latency_timer": "cuda_events" if device.type == "cuda" else "perf_counter",
    }
    model.eval()
    for key, batch_examples in (("bs1", examples[:1]), ("batch", examples)):
        batch = to_device(data.collate(batch_examples), device)
        batch.pop("labels", None)
        if key == "batch":  # as executed: padding included, the same batch for every method
            result["flops_per_sample"] = forward_flops(model, batch, device, run.precision) / len(batch_examples)

        @torch.inference_mode()
        def forward():
            with autocast(device, run.precision):
                return model(**batch)

        lat = measure_latency(forward, device, run.latency_warmup, run.latency_repeats)
        result[f"latency_{key}_p50_ms"] = lat.p50_ms
        result[f"latency_{key}_p90_ms"] = lat.p90_ms
    return result


# Generation is seconds per call on a CPU: fewer repeats than a forward pass, and a fixed
# number of new tokens (EOS ignored) so that every method generates the same amount.
GENERATION_NEW_TOKENS = 32
GENERATION_WARMUP = 1
GENERATION_REPEATS = 5


def generation_costs(
    model: torch.nn.Module,
    tokenizer,
    prompts: list[str],
    batch_size: int,
    device: torch.device,
    precision: str,
    new_tokens: int = GENERATION_NEW_TOKENS,
    warmup: int = GENERATION_WARMUP,
    repeats: int = GENERATION_REPEATS,
) -> dict[str, Any]:
    """Time to first token and generation throughput, greedy, at batch 1 and at `batch_size`.

    Time to first token is a whole `generate` call for one new token (prefill plus one
    step). Throughput is new tokens over the wall time of a call that makes `new_tokens`
    per sequence, prefill included (end-to-end, as a user waits for it). Prompts are
    left-padded, as batched generation needs."""
    n = min(batch_size, len(prompts))
    result: dict[str, Any] = {
        "generation_batch_size": n,
        "generation_new_tokens": new_tokens,
        "generation_repeats": repeats,
    }
    model.eval()
    for key, size in (("bs1", 1), ("batch", n)):
        inputs = tokenizer(prompts[:size], return_tensors="pt", padding=True, padding_side="left")
        inputs = to_device(dict(inputs), device)

        def generate(k: int):
            @torch.inference_mode()
            def call():
                with autocast(device, precision):
                    return model.generate(
                        **inputs,
                        max_new_tokens=k,
                        min_new_tokens=k,
                        do_sample=False,
                        use_cache=True,
                        pad_token_id=tokenizer.pad_token_id,
                    )

            return call

        first = measure_latency(generate(1), device, warmup, repeats)
        full = measure_latency(generate(new_tokens), device, warmup, repeats)
        result[f"ttft_{key}_p50_ms"] = first.p50_ms
        result[f"generation_{key}_tokens_per_s"] = size * new_tokens / (full.p50_ms / 1e3)
    return result
