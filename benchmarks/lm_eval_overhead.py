"""How much longer does evaluation through the harness take than lm-eval called directly? Target: at most 5%.

Both sides score the same loaded model on the same lm-eval tasks, limit and batch size, with the
data read from the same local mirror (the hub's Parquet layout). The harness side is the lm-eval
suite's whole evaluation cost: building the tasks with their data (`lm_eval_tasks.build`), the
pre-flight that records every request and checks the prompts fit the context window (as
`check_inputs` does), and `lm_eval.evaluate`. The direct side is what a user would write: each
task's stock YAML pointed at the mirror by hand, then `lm_eval.simple_evaluate` on an `HFLM`
wrapping the model. The model load (the same for both) is left out, and lm-eval's task index,
built once per process either way, is shared and timed on its own. After an untimed warm-up
round (the data sets' Arrow cache is written on first load), the sides alternate for --repeats
rounds and the median of each is compared; the script also checks that both gave the same
primary metric on every task and prints a warning if not. It reports the ratio, it does not
assert the target. Appends a row to <--out>/lm_eval_overhead.parquet.

    python benchmarks/lm_eval_overhead.py --model smollm2-135m --tasks arc_easy,piqa --limit 100
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# As the lm-eval suite's default --max-new-tokens (and HFLM's own max_gen_toks); only
# generation tasks use it.
MAX_NEW_TOKENS = 256
SPLIT_KEYS = ("training_split", "validation_split", "test_split", "fewshot_split")


def load_model(name: str):
    """The model and tokenizer as the lm-eval suite loads them (harness/suites/lm_tasks.py build_model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.core.errors import HarnessError
    from harness.data.resolve import from_pretrained, resolve_model

    resolved = resolve_model(name)
    if not resolved.location:
        raise HarnessError(f"model {name!r} is not available on this machine; pass a local model folder")
    tokenizer = from_pretrained(AutoTokenizer, resolved.location)
    model = from_pretrained(AutoModelForCausalLM, resolved.location)
    if tokenizer.pad_token is None:  # as build_model: padding positions are masked, EOS is a safe filler
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def leaf_tasks(spec: str) -> list[str]:
    """The --tasks names, each a single lm-eval task (the direct side writes one YAML per task by hand)."""
    from lm_eval.tasks._index import Kind

    from harness.core.errors import HarnessError
    from harness.evaluation.lm_eval_tasks import task_manager, task_names

    names = task_names(spec)
    index = task_manager().task_index
    for name in names:
        entry = index.get(name)
        if entry is None or entry.kind != Kind.TASK or not entry.yaml_path:
            raise HarnessError(f"--tasks {name!r} is not a single lm-eval task with a YAML file; name its tasks")
    return names


def mirror_config(name: str, root: Path) -> dict:
    """lm-eval's stock YAML of task `name` with its splits read from the mirror, written by hand as a
    user would: `dataset_path: parquet` with `data_files`, and a split the mirror lacks set to null."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from harness.evaluation.lm_eval_tasks import task_manager

    config = load_yaml(task_manager().task_index[name].yaml_path)
    folder = root / config["dataset_path"] / (config.get("dataset_name") or "default")
    files: dict[str, list[str]] = {}
    for key in SPLIT_KEYS:
        split = config.get(key)
        if split is None or split in files:
            continue
        found = sorted(str(p) for p in folder.glob(f"{split}-*.parquet"))
        if found:
            files[split] = found
        else:
            config[key] = None
    config.update(dataset_path="parquet", dataset_name=None, dataset_kwargs={"data_files": files})
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="a local model folder or an alias")
    parser.add_argument("--tasks", default="arc_easy,piqa", help="lm-eval task names, comma separated")
    parser.add_argument("--limit", type=int, default=100, help="documents per task")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="rounds, alternating harness and direct")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="the local data mirror")
    parser.add_argument("--out", default="benchmarks/results", help="the folder the Parquet file goes to")
    args = parser.parse_args()
    from harness.core.errors import HarnessError

    if args.repeats < 1 or args.limit < 1 or args.batch_size < 1:
        raise HarnessError("--repeats, --limit and --batch-size must each be at least 1")

    import torch
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    from harness.core.environment import describe
    from harness.data.resolve import mirror_root
    from harness.evaluation import lm_eval, lm_eval_tasks
    from harness.results.store import append_records

    start = time.perf_counter()
    manager = lm_eval_tasks.task_manager()  # lm-eval's index, built once per process, shared by both sides
    index_seconds = time.perf_counter() - start
    names = leaf_tasks(args.tasks)
    root = mirror_root(args.data_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model(args.model)
    model.to(device).eval()
    window = lm_eval.context_window(model, tokenizer)

    parts: dict[str, list[float]] = {"build": [], "preflight": []}  # where the harness's time goes

    def harness_side() -> dict[str, float]:
        begin = time.perf_counter()
        tasks = lm_eval_tasks.build(args.tasks, root)
        built = time.perf_counter()
        recorded = lm_eval.requests(tasks, 0, args.limit)
        lm_eval.check_prompts_fit(recorded, tokenizer, window, MAX_NEW_TOKENS, 0, args.tasks)
        parts["build"].append(built - begin)
        parts["preflight"].append(time.perf_counter() - built)
        result = lm_eval.evaluate(
            model,
            tokenizer,
            tasks,
            num_fewshot=0,
            limit=args.limit,
            batch_size=args.batch_size,
            max_new_tokens=MAX_NEW_TOKENS,
            show_progress=False,
        )
        primary = {name: lm_eval_tasks.primary_metric(name) for name in names}
        return {name: result.metrics[lm_eval.row_metric(name, key, tasks)] for name, key in primary.items()}

    def direct_side() -> dict[str, float]:
        configs = [mirror_config(name, root) for name in names]
        out = simple_evaluate(
            model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=args.batch_size),
            tasks=configs,
            limit=args.limit,
            num_fewshot=0,
            # As the harness passes it (`lm_eval --gen_kwargs max_gen_toks=256`), so generation tasks match.
            gen_kwargs={"max_gen_toks": MAX_NEW_TOKENS},
            log_samples=True,
            task_manager=manager,
        )
        scores = {}
        for name in names:
            primary = lm_eval_tasks.primary_metric(name)
            (key,) = [k for k in out["results"][name] if "," in k and lm_eval_tasks.metric_name(k) == primary]
            scores[name] = float(out["results"][name][key])
        return scores

    def timed(fn) -> tuple[float, dict[str, float]]:
        begin = time.perf_counter()
        scores = fn()
        return time.perf_counter() - begin, scores

    # Untimed: the first load of each Parquet file writes the data sets' Arrow cache, which either
    # side would pay for the other.
    harness_side()
    direct_side()
    for times in parts.values():
        times.clear()
    harness_times, direct_times, mismatches = [], [], []
    for _ in range(args.repeats):
        seconds, harness_scores = timed(harness_side)
        harness_times.append(seconds)
        seconds, direct_scores = timed(direct_side)
        direct_times.append(seconds)
        if harness_scores != direct_scores:
            mismatches.append((harness_scores, direct_scores))

    build_seconds = statistics.median(parts["build"])
    preflight_seconds = statistics.median(parts["preflight"])
    harness_seconds = statistics.median(harness_times)
    direct_seconds = statistics.median(direct_times)
    ratio = harness_seconds / direct_seconds
    overhead = 100 * (ratio - 1)
    same = not mismatches
    shown = ", ".join(f"{name} {score:.4f}" for name, score in harness_scores.items())
    print(
        f"{args.tasks} (limit {args.limit}, batch {args.batch_size}, {args.repeats} rounds, {device}): harness "
        f"{harness_seconds:.2f}s, lm-eval direct {direct_seconds:.2f}s, ratio {ratio:.3f} ({overhead:+.1f}%, "
        f"{'within' if ratio <= 1.05 else 'NOT within'} the 5% target; of the harness's time, building the tasks "
        f"{build_seconds:.2f}s and the pre-flight {preflight_seconds:.2f}s); task index {index_seconds:.2f}s, "
        f"built once and shared; primary metrics {shown}"
    )
    if not same:
        harness_scores, direct_scores = mismatches[0]
        print(
            f"WARNING: the two sides' primary metrics differ in {len(mismatches)} of {args.repeats} rounds: "
            f"harness {harness_scores}, direct {direct_scores}"
        )

    env = describe(device)
    record = {
        "created_at": datetime.now(timezone.utc),
        "model": args.model,
        "tasks": args.tasks,
        "limit": args.limit,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "harness_seconds": harness_seconds,
        "direct_seconds": direct_seconds,
        "ratio": ratio,
        "overhead_percent": overhead,
        "within_target": ratio <= 1.05,
        "same_scores": same,
        "harness_build_seconds": build_seconds,
        "harness_preflight_seconds": preflight_seconds,
        "task_index_seconds": index_seconds,
        "torch_threads": torch.get_num_threads(),
        "machine": (f"{env.get('device_name')}; " if device.type == "cuda" else "")
        + f"{env.get('cpu_model')}, {os.cpu_count()} CPUs",
        "lm_eval_version": lm_eval_tasks.lm_eval_version(),
        "git_commit": env.get("git_commit"),
    }
    print(f"appended to {append_records(Path(args.out) / 'lm_eval_overhead.parquet', [record])}")


if __name__ == "__main__":
    main()
