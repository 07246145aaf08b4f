"""`harness run`: one job."""

from __future__ import annotations

from typing import Optional

import typer

from harness.cli.app import app, err


@app.command()
def run(
    suite: str = typer.Option(..., "--suite", "-s", help="Suite name (see `harness list suites`)."),
    method: Optional[str] = typer.Option(
        None,
        "--method",
        "-m",
        help="Method or pipeline (+), e.g. lora:r=16,alpha=32; wanda:sparsity=0.5+lora (prune, then recover); lora+int8 (adapt, merge, then quantize). Required unless --preset names one.",
    ),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task of the suite (see `harness list tasks`)."),
    model: Optional[str] = typer.Option(
        None, "--model", help="Model alias, local directory or hub id; default: the suite's."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation, shuffling and dropout."),
    max_train_samples: Optional[int] = typer.Option(
        None, "--max-train-samples", help="Train on a fixed subset of this size."
    ),
    max_eval_samples: Optional[int] = typer.Option(
        None,
        "--max-eval-samples",
        help="Evaluate on a fixed random N examples (the same for every run); gsm8k: the first N, as lm-eval's --limit.",
    ),
    epochs: Optional[float] = typer.Option(None, "--epochs", help="Training epochs (suite default if omitted)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps; overrides --epochs."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (method default if omitted)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Training batch size."),
    eval_batch_size: Optional[int] = typer.Option(None, "--eval-batch-size", help="Evaluation and latency batch size."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate inputs to this many tokens."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 (default), bf16 or fp16 (autocast)."),
    warmup_ratio: Optional[float] = typer.Option(
        None, "--warmup-ratio", help="Share of steps with linear warm-up (suite default if omitted)."
    ),
    weight_decay: Optional[float] = typer.Option(
        None, "--weight-decay", help="AdamW weight decay (suite default if omitted)."
    ),
    max_grad_norm: Optional[float] = typer.Option(
        None, "--max-grad-norm", help="Clip the gradient norm to this (default 1.0; 0: no clipping)."
    ),
    lr_scheduler: Optional[str] = typer.Option(
        None, "--lr-scheduler", help="linear or cosine, after warm-up (suite default if omitted)."
    ),
    grad_accum: Optional[int] = typer.Option(
        None, "--grad-accum", help="Micro-batches of --batch-size per optimizer step (default 1)."
    ),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Recompute activations in backward: less memory, more time."
    ),
    max_train_tokens: Optional[int] = typer.Option(
        None, "--max-train-tokens", help="Token budget: stop training after this many non-padding tokens."
    ),
    packing: bool = typer.Option(
        False,
        "--packing",
        help="Causal LM: pack examples into one row per batch (no padding; attention kept per example).",
    ),
    train_data: Optional[str] = typer.Option(
        None,
        "--train-data",
        help="Causal LM: train on this hub data set (ID[:CONFIG], e.g. meta-math/MetaMathQA) instead of the task's train split.",
    ),
    num_fewshot: Optional[int] = typer.Option(
        None, "--num-fewshot", help="Generative eval: few-shot examples per prompt (suite default: 0)."
    ),
    max_new_tokens: Optional[int] = typer.Option(
        None, "--max-new-tokens", help="Generative eval: most tokens generated per answer (suite default: 256)."
    ),
    kernel_profile: bool = typer.Option(
        True,
        "--kernel-profile/--no-kernel-profile",
        help="Profile a few training steps and inference batches with torch.profiler (kernel table in <results>/_kernels).",
    ),
    preset: Optional[str] = typer.Option(
        None, "--preset", help="A published setup by name (e.g. gsm8k's peft-metamathqa); flags given still win."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    data_dir: Optional[str] = typer.Option(
        None,
        "--data-dir",
        help="Local mirror root laid out as <root>/<hub id>/<config>/<split>-*.parquet [env: HARNESS_DATA_DIR].",
    ),
    results: str = typer.Option("results", "--results", help="Result store folder."),
    latency_repeats: int = typer.Option(20, "--latency-repeats", help="Timed repeats per latency percentile."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run one job: train a method on a task, evaluate it, measure its costs, write one result row."""
    from harness.engine.job import run_job
    from harness.spec.run import RunSpec

    spec = RunSpec.build(
        suite=suite,
        method=method,
        task=task,
        model=model,
        seed=seed,
        max_train_samples=max_train_samples,
        max_eval_samples=max_eval_samples,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        max_length=max_length,
        precision=precision,
        device=device,
        data_dir=data_dir,
        results_dir=results,
        latency_repeats=latency_repeats,
        lr_scheduler=lr_scheduler,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        gradient_accumulation_steps=grad_accum,
        gradient_checkpointing=gradient_checkpointing,
        max_train_tokens=max_train_tokens,
        packing=packing,
        train_data=train_data,
        num_fewshot=num_fewshot,
        max_new_tokens=max_new_tokens,
        preset=preset,
        kernel_profile=kernel_profile,
    )
    result = run_job(spec, show_progress=not quiet)
    row = result.row
    if not result.ok:
        err(f"run failed: {row['error']} (row with traceback: {result.path})")
        raise typer.Exit(1)
    peak = row["peak_memory_bytes"]  # None when nothing trained (e.g. --method none)
    print(
        f"{row['suite']}/{row['task']} {row['method']} seed={row['seed']}: {row['metric']}={row['score']:.4f} | "
        f"trainable={row['trainable_params']:,} train={row['train_seconds']:.1f}s "
        f"peak_mem={f'{peak / 2**20:.0f}MiB' if peak is not None else 'n/a'} "
        f"latency_bs1_p50={row['latency_bs1_p50_ms']:.1f}ms"
        + (
            f" ttft_bs1={row['ttft_bs1_p50_ms']:.0f}ms gen_bs1={row['generation_bs1_tokens_per_s']:.1f}tok/s"
            if row.get("ttft_bs1_p50_ms") is not None
            else ""
        )
        + f"\nwrote {result.path}"
    )
