"""Kernel table and adapter share (harness.measure.kernels) of LoRA and DoRA on a real model and batch.

Builds the GLUE SST-2 classifier on --model, applies the harness's `lora` and `dora`
methods (peft; r=8 on query and value) and, beside the model without adapters, profiles a
training step (forward, backward, AdamW step, zero_grad) on a batch of real SST-2
sentences and an inference forward of the same batch. Prints the top kernels with their
categories, the category shares and the adapter share of each. The adapter share is the
fraction of operator (CPU) or kernel (CUDA) time attributed to the adapter modules,
forward and backward, base layers excluded: see docs/kernel-profiles.md.

    python benchmarks/kernel_share.py --model minilm-l6 --data-dir ../shared/data --threads 1

On a CPU that other processes share, --threads 1: with more intra-op threads than free
cores, operators wait at thread barriers and their times mean little.
"""

from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path

import torch

from harness.data.resolve import resolve_model
from harness.engine.loop import build_optimizer
from harness.measure.kernels import profile_steps
from harness.methods.base import MethodContext
from harness.methods.pipeline import Pipeline
from harness.suites.base import SUITES


def sst2_train(data_dir: Path):
    import datasets

    files = sorted((data_dir / "nyu-mll" / "glue" / "sst2").glob("train-*.parquet"))
    if not files:
        raise SystemExit(f"no SST-2 train-*.parquet under {data_dir / 'nyu-mll/glue/sst2'}")
    return datasets.Dataset.from_parquet([str(f) for f in files])


def first_batch(train, tokenizer, batch_size: int, max_length: int) -> dict[str, torch.Tensor]:
    """The first `batch_size` sentences, padded to the longest, as the GLUE suite's collator does."""
    rows = train.select(range(batch_size))
    batch = tokenizer(list(rows["sentence"]), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    batch["labels"] = torch.tensor(list(rows["label"]))
    return dict(batch)


def profile_method(spec: str, base, batch, suite, device, args):
    """(phase, KernelProfile) for a training step and an inference forward of `spec` on a copy of `base`."""
    model = copy.deepcopy(base)
    ctx = MethodContext(
        task_type="seq_cls", head_modules=tuple(suite.head_modules(model)), total_steps=1000, lr=1e-4, seed=0
    )
    pipeline = None
    if spec != "none":
        pipeline = Pipeline.parse(spec)
        model = pipeline.apply(model, ctx).to(device)
    scopes = pipeline.adapter_scopes(model) if pipeline is not None else []
    optimizer = (
        build_optimizer(model, pipeline, ctx)
        if pipeline is not None
        else torch.optim.AdamW(model.parameters(), lr=1e-5)
    )
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def train_step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def inference():
        with torch.inference_mode():
            model(**inputs)

    print(f"{spec}: {len(scopes)} adapter scopes")
    results = []
    for phase, fn, train_mode in (("train", train_step, True), ("inference", inference, False)):
        model.train(train_mode)
        results.append(
            (
                phase,
                profile_steps(fn, device, warmup=args.warmup, steps=args.steps, adapters=scopes, repeats=args.repeats),
            )
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--methods", default="none,lora,dora", help="comma-separated method specs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="profiles per case (see profile_steps: repeats, robust)")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    suite = SUITES.get("glue")()
    task = suite.get_task("sst2")
    location = resolve_model(args.model).location
    torch.manual_seed(0)
    train = sst2_train(Path(args.data_dir))
    base, tokenizer = suite.build_model(location, task, train)
    base.to(device)
    batch = first_batch(train, tokenizer, args.batch_size, args.max_length)
    batch = {k: v.to(device) for k, v in batch.items()}
    tokens = int(batch["attention_mask"].sum())
    print(
        f"{args.model} ({location}), SST-2 batch {tuple(batch['input_ids'].shape)} ({tokens} real tokens), "
        f"device {device}, torch threads {torch.get_num_threads()}, {args.steps} steps x {args.repeats} profiles\n"
    )

    summary = []
    for spec in args.methods.split(","):
        for phase, prof in profile_method(spec, base, batch, suite, device, args):
            per_step_ms = prof.total_us / prof.steps / 1000
            print(
                f"== {spec} / {phase}: {per_step_ms:.1f} ms of {prof.device_kind} op time per step, "
                f"adapter share {prof.adapter_share:.1%}, top category {prof.top_category}"
            )
            print(prof.format(args.top))
            print("   categories: " + ", ".join(f"{c} {s:.1%}" for c, s in prof.category_shares().items()))
            print("   " + "; ".join(prof.notes) + "\n")
            summary.append((spec, phase, per_step_ms, prof.adapter_share, prof.top_category))

    width = max(len("method"), *(len(spec) for spec, *_ in summary))
    print(f"{'method':{width}s} {'phase':10s} {'op ms/step':>10s} {'adapter share':>14s}  top category")
    for spec, phase, ms, share, top in summary:
        print(f"{spec:{width}s} {phase:10s} {ms:10.1f} {share:14.1%}  {top}")


if __name__ == "__main__":
    main()
