"""How much the harness's training loop costs over a plain PyTorch loop.

Builds one model (suite + method, as `harness run` does), then times alternately the
harness loop (`harness.engine.loop.train`, meters and progress bar on) and a plain loop with
the same data order, optimizer, schedule, batch size and steps, each from the same
initial weights. Prints the median ratio harness / plain and writes a Parquet row.

    python benchmarks/train_overhead.py --model minilm-l6 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from datetime import datetime, timezone

import torch
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from harness.core.environment import describe
from harness.engine.loop import train
from harness.engine.resolve import resolve
from harness.methods.base import MethodContext
from harness.methods.optim import default_optimizer
from harness.results.store import append_records
from harness.spec.run import RunSpec
from harness.spec.subsets import fixed_subset


def plain_loop(model, data, *, steps, batch_size, lr, weight_decay, warmup_ratio, max_grad_norm, seed) -> float:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = default_optimizer(named, lr, weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(warmup_ratio * steps), steps)
    loader = DataLoader(
        data.dataset,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=data.collate,
        generator=torch.Generator().manual_seed(seed),
    )
    model.train()
    done = 0
    start = time.perf_counter()
    while done < steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done += 1
            if done >= steps:
                break
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="glue")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--train-samples", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/train_overhead.parquet")
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    spec = RunSpec(
        suite=args.suite,
        task=args.task,
        method=args.method,
        model=args.model,
        data_dir=args.data_dir,
        max_train_samples=args.train_samples,
        batch_size=args.batch_size,
        max_steps=args.steps,
    )
    run, suite, task, pipeline, sources = resolve(spec)
    train_ds = fixed_subset(suite.load(sources[task.train_split]), args.train_samples)
    torch.manual_seed(0)
    base, tokenizer = suite.build_model(run.model_location, task, train_ds)
    data = suite.prepare(train_ds, tokenizer, task, run.max_length)
    ctx = MethodContext(
        task_type=suite.task_type,
        head_modules=suite.head_modules(base),
        total_steps=args.steps,
        lr=run.lr,
        weight_decay=run.weight_decay,
        seed=0,
    )
    initial = pipeline.apply(base, ctx)
    device = torch.device("cpu")

    def time_harness() -> float:
        model = copy.deepcopy(initial)
        return train(
            model,
            data,
            pipeline,
            ctx,
            batch_size=args.batch_size,
            steps=args.steps,
            warmup_ratio=run.warmup_ratio,
            max_grad_norm=run.max_grad_norm,
            precision="fp32",
            device=device,
            seed=0,
            show_progress=True,
        ).seconds

    def time_plain() -> float:
        model = copy.deepcopy(initial)
        return plain_loop(
            model,
            data,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=run.lr,
            weight_decay=run.weight_decay,
            warmup_ratio=run.warmup_ratio,
            max_grad_norm=run.max_grad_norm,
            seed=0,
        )

    harness_s, plain_s = [], []
    for i in range(args.repeats):
        # Alternate which loop goes first, so warm-up and drift do not favour either.
        if i % 2 == 0:
            harness_s.append(time_harness())
            plain_s.append(time_plain())
        else:
            plain_s.append(time_plain())
            harness_s.append(time_harness())
        print(f"repeat {i + 1}: harness {harness_s[-1]:.2f}s, plain {plain_s[-1]:.2f}s")
    ratio = statistics.median(harness_s) / statistics.median(plain_s)
    print(
        f"median training time over {args.steps} steps: harness {statistics.median(harness_s):.2f}s, "
        f"plain {statistics.median(plain_s):.2f}s, ratio {ratio:.3f} ({(ratio - 1) * 100:+.1f}%)"
    )

    env = describe(device)
    row = {
        "benchmark": "train_overhead",
        "created_at": datetime.now(timezone.utc),
        "suite": run.suite,
        "task": run.task,
        "method": run.method,
        "model": run.model,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "harness_seconds_median": statistics.median(harness_s),
        "plain_seconds_median": statistics.median(plain_s),
        "ratio": ratio,
        "device_name": env["device_name"],
        "torch_version": env["torch_version"],
        "git_commit": env["git_commit"],
    }
    print(f"wrote {append_records(args.out, [row])}")


if __name__ == "__main__":
    main()
