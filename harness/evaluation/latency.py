"""Generation costs of a causal LM in memory with transformers' `generate`: time to first token
and generation throughput. Every timing is a percentile over repeats after warm-up
(`measure_latency`), on the fixed evaluation prompts, so methods compare. Forward latency and
FLOPs are in harness/evaluation/torch_forward.py."""

from __future__ import annotations

from typing import Any

import torch

from harness.evaluation.torch_forward import forward_latency
from harness.measure.passes import autocast, to_device
from harness.measure.timing import measure_latency

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


def lm_costs(model: torch.nn.Module, tokenizer, data, run, device: torch.device) -> dict[str, Any]:
    """A causal LM's inference costs: forward (prefill) latency and FLOPs on the evaluation prompts
    (`data`, prepared; `data.references`: the prompts as text), then time to first token and throughput."""
    costs = forward_latency(model, data, run, device)
    costs.update(generation_costs(model, tokenizer, data.references, run.eval_batch_size, device, run.precision))
    return costs
