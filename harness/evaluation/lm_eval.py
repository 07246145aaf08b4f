"""Generative evaluation through lm-evaluation-harness, on the model in memory.

The harness does not re-implement prompts, few-shot sampling, stop sequences or answer
extraction: lm-eval's own task config does all of that, and the harness only points its
data at the located splits (a local mirror, offline) and hands it the model after the
method was applied, adapters included. So a score here is the score `lm_eval` gives the
same model with the same limit and settings. `LmEvalHF` is this path as an evaluation backend
(harness/evaluation/base.py); harness/evaluation/vllm.py hands lm-eval a vLLM engine instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import numbers
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from unittest import mock

import torch

from harness.core.errors import HarnessError
from harness.data.resolve import DataSource
from harness.evaluation.base import EVAL_BACKENDS, GenerateBackend
from harness.evaluation.latency import lm_costs


def task_config(name: str, sources: dict[str, DataSource]) -> dict[str, Any]:
    """lm-eval's config of task `name`, reading its splits from `sources` where they are files.

    `sources` maps the task's split names (e.g. train, test) to located splits; a split
    that resolved to the hub is left to lm-eval's own `dataset_path`."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager().task_index.get(name)
    if entry is None or entry.yaml_path is None:
        raise HarnessError(f"lm-eval has no task {name!r} (lm-eval {lm_eval_version()})")
    config = load_yaml(entry.yaml_path)
    files = {split: list(source.files) for split, source in sources.items() if source.files}
    if files:
        # The mirror holds the hub's Parquet files: lm-eval loads them with the parquet builder.
        config.update(dataset_path="parquet", dataset_name=None, dataset_kwargs={"data_files": files})
    return config


@lru_cache(maxsize=1)
def task_manager():
    """lm-eval's task index, built once per process (it parses every task's YAML: seconds)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def context_window(model: torch.nn.Module, tokenizer) -> int:
    """The longest input the model takes, as lm-eval's HF model resolves it."""
    from lm_eval.models.utils import resolve_max_length

    return resolve_max_length(getattr(model, "config", None), tokenizer)


@dataclass
class LmEvalResult:
    metrics: dict[str, float]  # "<metric>,<filter>" -> value, as lm-eval names them
    samples: list[dict[str, Any]]  # lm-eval's per-document log: prompt, response, filtered answers
    settings: dict[str, Any]  # what a reader needs to reproduce the call
    # Per document, filter and metric: doc_id, filter, metric ("<metric>,<filter>"), score, response, target.
    examples: list[dict[str, Any]] = field(default_factory=list)


def _quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _evaluate(
    lm, config: dict[str, Any], num_fewshot: int, limit: int | None, gen_kwargs: dict | None, show_progress: bool = True
):
    from lm_eval import simple_evaluate

    _quiet_lm_eval()
    # lm-eval draws its progress bars on sys.stderr; without progress they go nowhere.
    silence = contextlib.nullcontext() if show_progress else contextlib.redirect_stderr(io.StringIO())
    # lm-eval asks git for the working directory's commit, and git prints an error outside a
    # repository; the row records the harness's own commit, so the lookup is skipped.
    with mock.patch("lm_eval.evaluator.get_git_commit_hash", lambda: None), silence:
        return simple_evaluate(
            model=lm,
            tasks=[dict(config)],
            num_fewshot=num_fewshot,
            limit=limit,
            gen_kwargs=gen_kwargs,
            log_samples=True,
            verbosity="ERROR",
            task_manager=task_manager(),
        )


def prompts(config: dict[str, Any], num_fewshot: int, limit: int | None) -> list[str]:
    """The exact prompts lm-eval will generate from (few-shot examples included), without a model:
    a recording stand-in answers every request with an empty string."""
    from lm_eval.api.model import LM

    class Recorder(LM):
        def __init__(self):
            super().__init__()
            self.contexts: list[str] = []

        def generate_until(self, requests, disable_tqdm: bool = False):
            self.contexts += [request.args[0] for request in requests]
            return ["" for _ in requests]

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return [(0.0, False) for _ in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return [0.0 for _ in requests]

    recorder = Recorder()
    _evaluate(recorder, config, num_fewshot, limit, None, show_progress=False)
    return recorder.contexts


def check_prompts_fit(
    contexts: list[str], tokenizer, window: int, max_new_tokens: int, num_fewshot: int, task: str
) -> None:
    """A prompt that with the generated tokens overflows the context window would be cut on
    the left by lm-eval without a word: bad input, said before any training."""
    lengths = [len(ids) for ids in tokenizer(contexts)["input_ids"]] if contexts else [0]
    longest = max(lengths)
    if longest + max_new_tokens > window:
        raise HarnessError(
            f"the longest {task} prompt ({num_fewshot}-shot, doc {lengths.index(longest)}) is {longest} tokens; "
            f"with --max-new-tokens {max_new_tokens} it exceeds the model's context window of {window}; "
            f"lower --num-fewshot or --max-new-tokens"
        )


def evaluate(
    model: torch.nn.Module,
    tokenizer,
    config: dict[str, Any],
    *,
    num_fewshot: int,
    limit: int | None,
    batch_size: int,
    max_new_tokens: int,
    show_progress: bool = True,
) -> LmEvalResult:
    """lm-eval's `simple_evaluate` on `model` as it is (a peft model, a merged or compressed one)."""
    from lm_eval.models.huggingface import HFLM

    _quiet_lm_eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    return score(lm, config, num_fewshot, limit, max_new_tokens, {"batch_size": batch_size}, show_progress)


def score(
    lm,
    config: dict[str, Any],
    num_fewshot: int,
    limit: int | None,
    max_new_tokens: int,
    settings: dict[str, Any],
    show_progress: bool = True,
) -> LmEvalResult:
    """lm-eval's scores of the task with the lm-eval model `lm`, and the settings of the call
    (`settings`: what the caller adds, e.g. its batch size)."""
    # As `lm_eval --gen_kwargs max_gen_toks=N` sets it, so that call reproduces this one.
    out = _evaluate(lm, config, num_fewshot, limit, {"max_gen_toks": max_new_tokens}, show_progress)
    task = config["task"]
    metrics = {
        k: float(v) for k, v in out["results"][task].items() if isinstance(v, (int, float)) and k != "sample_len"
    }
    task_config_used = out["configs"][task]
    recorded = {
        "harness": "lm-eval",
        "lm_eval_version": lm_eval_version(),
        "task": task,
        "task_version": out.get("versions", {}).get(task),
        "num_fewshot": out["n-shot"][task],
        "limit": limit,
        "generation_kwargs": task_config_used.get("generation_kwargs"),
        "max_gen_toks": max_new_tokens,
        **settings,
        "fewshot_seed": out["config"].get("fewshot_seed"),
        "filters": [f["name"] for f in task_config_used.get("filter_list") or []],
    }
    samples = out["samples"][task]
    return LmEvalResult(metrics, samples, recorded, sample_records(samples, task_config_used))


def sample_records(samples: list[dict[str, Any]], config: dict[str, Any]) -> list[dict[str, Any]]:
    """lm-eval's per-sample log as records: one per document, filter and metric, with the filtered
    response, the target and the document's value of the metric. The value is a score only where
    lm-eval aggregates the metric by its mean (exact match), so that the mean of the scores is the
    task's value; a corpus-level metric's per-document item is no score (null)."""
    means = {m["metric"] for m in config.get("metric_list") or [] if m.get("aggregation", "mean") == "mean"}
    records = []
    for sample in sorted(samples, key=lambda s: (s["filter"], s["doc_id"])):
        responses = sample["filtered_resps"]
        response = responses[0] if len(responses) == 1 and isinstance(responses[0], str) else None
        target = sample["target"]
        for metric in sample["metrics"]:
            value = sample[metric]
            numeric = isinstance(value, numbers.Real)  # numpy's scalars and bools among them
            records.append(
                {
                    "doc_id": int(sample["doc_id"]),
                    "filter": sample["filter"],
                    "metric": f"{metric},{sample['filter']}",
                    "score": float(value) if metric in means and numeric else None,
                    "response": response if response is not None else json.dumps(responses, default=str),
                    "target": target if isinstance(target, str) else json.dumps(target, default=str),
                }
            )
    return records


def documents(samples: list[dict[str, Any]]) -> int:
    """Documents evaluated: lm-eval logs one sample per document and filter."""
    return len({s["doc_id"] for s in samples})


@EVAL_BACKENDS.register("lm-eval-hf")
class LmEvalHF(GenerateBackend):
    """lm-eval's transformers model (HFLM) on the model in memory, adapters included; costs with `generate`."""

    current = True

    def evaluate(self, model, tokenizer, config, **settings) -> LmEvalResult:
        return evaluate(model, tokenizer, config, **settings)

    def costs(self, model, tokenizer, data, run, device) -> dict[str, Any]:
        return lm_costs(model, tokenizer, data, run, device)
