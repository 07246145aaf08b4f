"""Training-step and inference-forward time of every method on one fixed model and batch.

For each registered method (or --methods): apply it to a fresh copy of the model, then
time a full training step (forward, backward, optimizer step, method hook, zero_grad)
and an inference forward, each as p50/p90 over repeats after warm-up, beside the same
model without any adapter ("none"). Then checks the harness's LoRA against peft used
directly: the same LoRA config, each stepping through the same batch, timed alternately.

Writes <results>/_benchmarks/method_step.parquet, which `harness report` shows.

    python benchmarks/method_step.py --model minilm-l6
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from harness.core.atomic import atomic_write
from harness.core.environment import describe
from harness.core.errors import HarnessError, first_line
from harness.data.resolve import resolve_model
from harness.engine.loop import build_optimizer
from harness.measure.memory import optimizer_state_bytes
from harness.measure.size import count_parameters
from harness.measure.timing import measure_latency
from harness.methods.base import METHODS, MethodContext
from harness.methods.pipeline import Pipeline

# Parameters a method's paper default cannot take on a 384-wide model (MiniLM-L6).
MODEL_OVERRIDES = {"vblora": "vblora:vector_length=128"}


def fixed_batch(vocab_size: int, batch_size: int, seq_len: int, num_labels: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(min(1000, vocab_size // 2), vocab_size, (batch_size, seq_len), generator=g),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=g),
    }


def make_step(model, pipeline, ctx, batch):
    optimizer = build_optimizer(model, pipeline, ctx)
    counter = {"step": 0}

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        pipeline.on_step(counter["step"], model)
        optimizer.zero_grad(set_to_none=True)
        counter["step"] += 1

    return step, optimizer


def time_method(spec, base, batch, args, device):
    model = copy.deepcopy(base)
    row = {"method": spec}
    if spec == "none":
        trainable, total = 0, count_parameters(model)[1]
        model.eval()
    else:
        pipeline = Pipeline.parse(spec)
        ctx = MethodContext(
            task_type="seq_cls",
            head_modules=("classifier",),
            total_steps=1000,
            lr=1e-4,
            seed=0,
            sample_batches=lambda n: iter([batch] * n),
        )
        model = pipeline.apply(model, ctx).to(device)
        trainable, total = count_parameters(model)
        model.train()
        step, optimizer = make_step(model, pipeline, ctx, batch)
        lat = measure_latency(step, device, args.warmup, args.repeats)
        row.update(
            step_ms_p50=lat.p50_ms, step_ms_p90=lat.p90_ms, optimizer_state_bytes=optimizer_state_bytes(optimizer)
        )
        model.eval()

    @torch.inference_mode()
    def forward():
        return model(**{k: v for k, v in batch.items() if k != "labels"})

    lat = measure_latency(forward, device, args.warmup, args.repeats)
    row.update(forward_ms_p50=lat.p50_ms, forward_ms_p90=lat.p90_ms, trainable_params=trainable, total_params=total)
    return row


def lora_against_peft(base, batch, args, device) -> tuple[float, float]:
    """Median step time of the harness's `lora` and of peft's LoRA with the same config."""
    from peft import LoraConfig, get_peft_model

    harness_pipeline = Pipeline.parse("lora")
    ctx = MethodContext(task_type="seq_cls", head_modules=("classifier",), total_steps=1000, lr=1e-4, seed=0)
    harness_model = harness_pipeline.apply(copy.deepcopy(base), ctx).train()
    p = harness_pipeline.methods[0].params
    direct = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, target_modules=["query", "value"], task_type="SEQ_CLS"
        ),
    ).train()
    harness_step, _ = make_step(harness_model, harness_pipeline, ctx, batch)
    direct_opt = torch.optim.AdamW([q for q in direct.parameters() if q.requires_grad], lr=1e-4)

    def direct_step():
        direct(**batch).loss.backward()
        direct_opt.step()
        direct_opt.zero_grad(set_to_none=True)

    times = {"harness": [], "peft": []}
    for i in range(args.repeats):
        order = [("harness", harness_step), ("peft", direct_step)]
        for name, fn in order if i % 2 == 0 else order[::-1]:  # alternate, so neither gets the warm caches
            times[name].append(measure_latency(fn, device, 1, 3).p50_ms)
    return statistics.median(times["harness"]), statistics.median(times["peft"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--methods", default="all", help="comma-separated method specs, or 'all'")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results", default="results")
    args = parser.parse_args()

    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # its optional-kernel notice is not ours
    device = torch.device(args.device)
    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(resolve_model(args.model).location, num_labels=2).to(
        device
    )
    batch = {k: v.to(device) for k, v in fixed_batch(base.config.vocab_size, args.batch_size, args.seq_len, 2).items()}
    names = (
        [n for n in METHODS.names() if not n.startswith("test-")] if args.methods == "all" else args.methods.split(",")
    )
    specs = ["none"] + [MODEL_OVERRIDES.get(n, n) for n in names]

    rows = []
    for spec in specs:
        started = time.perf_counter()
        try:
            row = time_method(spec, base, batch, args, device)
            row["status"], row["error"] = "ok", None
        except (HarnessError, RuntimeError, ValueError, TypeError) as exc:  # one method failing is one row
            row = {"method": spec, "status": "failed", "error": f"{type(exc).__name__}: {first_line(exc)[:200]}"}
        rows.append(row)
        shown = f"step p50 {row.get('step_ms_p50', float('nan')):7.1f} ms  forward p50 {row.get('forward_ms_p50', float('nan')):6.1f} ms"
        print(
            f"{spec:32s} {row['status']:6s} {shown}  ({time.perf_counter() - started:.0f}s)"
            + (f"  {row['error']}" if row["error"] else ""),
            flush=True,
        )

    base_forward = next(r["forward_ms_p50"] for r in rows if r["method"] == "none")
    for row in rows:
        if row.get("forward_ms_p50"):
            row["forward_vs_none"] = row["forward_ms_p50"] / base_forward

    harness_ms, peft_ms = lora_against_peft(base, batch, args, device)
    print(f"LoRA step: harness {harness_ms:.1f} ms, peft directly {peft_ms:.1f} ms, ratio {harness_ms / peft_ms:.3f}")
    env = describe(device)
    stamp = datetime.now(timezone.utc)
    for row in rows:
        row.update(
            model=args.model,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            repeats=args.repeats,
            device_name=env["device_name"],
            torch_version=env["torch_version"],
            peft_version=env["peft_version"],
            git_commit=env["git_commit"],
            created_at=stamp,
            lora_vs_peft_step_ratio=harness_ms / peft_ms if row["method"] == "lora" else None,
        )
    out = Path(args.results) / "_benchmarks" / "method_step.parquet"
    with atomic_write(out) as f:
        # from a DataFrame, so every row's keys become columns (the "none" row has no step time)
        pq.write_table(pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False), f)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
