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
from typing import Any
from unittest import mock

import torch

from harness.core.errors import HarnessError
from harness.evaluation.base import EVAL_BACKENDS, GenerateBackend
from harness.evaluation.latency import lm_costs
from harness.evaluation.lm_eval_tasks import LmEvalTasks, lm_eval_version, metric_name, task_manager


def context_window(model: torch.nn.Module, tokenizer) -> int:
    """The longest input the model takes, as lm-eval's HF model resolves it."""
    from lm_eval.models.utils import resolve_max_length

    return resolve_max_length(getattr(model, "config", None), tokenizer)


@dataclass
class LmEvalResult:
    metrics: dict[str, float]  # row metric names (harness.evaluation.lm_eval_tasks.metric_name), per task
    samples: dict[str, list[dict[str, Any]]]  # lm-eval's per-document log of each task
    settings: dict[str, Any]  # what a reader needs to reproduce the call
    # One record per task, document, filter and metric: task, doc_id, metric (a row metric name),
    # score, response, target.
    examples: list[dict[str, Any]] = field(default_factory=list)
    higher_is_better: dict[str, bool] = field(default_factory=dict)  # row metric -> its direction


def _quiet_lm_eval() -> None:
    for name in ("lm_eval", "lm-eval"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _evaluate(
    lm, tasks: LmEvalTasks, num_fewshot: int, limit: int | None, gen_kwargs: dict | None, show_progress: bool = True
):
    from lm_eval import simple_evaluate

    _quiet_lm_eval()
    # lm-eval draws its progress bars on sys.stderr; without progress they go nowhere.
    silence = contextlib.nullcontext() if show_progress else contextlib.redirect_stderr(io.StringIO())
    # lm-eval asks git for the working directory's commit, and git prints an error outside a
    # repository; it also attaches torch's environment report, which runs `pip list` and other
    # subprocesses (about 0.6 s, paid by the pre-flight and the scoring alike). The row records
    # the harness's own commit and environment (harness/core/environment.py), so both are skipped.
    with (
        mock.patch("lm_eval.evaluator.get_git_commit_hash", lambda: None),
        mock.patch("lm_eval.evaluator.add_env_info", lambda results: None),
        silence,
    ):
        return simple_evaluate(
            model=lm,
            tasks=tasks.fresh(),
            num_fewshot=num_fewshot,
            limit=limit,
            gen_kwargs=gen_kwargs,
            log_samples=True,
            verbosity="ERROR",
            task_manager=task_manager(),
        )


@dataclass
class Requests:
    """What lm-eval asks a model, recorded without one (see `requests`)."""

    generate: list[str] = field(default_factory=list)  # generation contexts
    choices: list[tuple[str, str]] = field(default_factory=list)  # (context, continuation) scored
    rolling: list[str] = field(default_factory=list)  # texts scored whole (perplexity)

    @property
    def prompts(self) -> list[str]:
        """Model inputs to time the forward pass on: contexts, else the texts scored whole."""
        return self.generate or list(dict.fromkeys(c for c, _ in self.choices)) or self.rolling


def requests(tasks: LmEvalTasks, num_fewshot: int, limit: int | None) -> Requests:
    """The exact requests lm-eval will send the model (few-shot examples included), without a
    model: a recording stand-in answers each with a placeholder."""
    from lm_eval.api.model import LM

    recorded = Requests()

    class Recorder(LM):
        def generate_until(self, batch, disable_tqdm: bool = False):
            recorded.generate.extend(request.args[0] for request in batch)
            return ["" for _ in batch]

        def loglikelihood(self, batch, disable_tqdm: bool = False):
            recorded.choices.extend((request.args[0], request.args[1]) for request in batch)
            return [(0.0, False) for _ in batch]

        def loglikelihood_rolling(self, batch, disable_tqdm: bool = False):
            recorded.rolling.extend(request.args[0] for request in batch)
            return [0.0 for _ in batch]

    _evaluate(Recorder(), tasks, num_fewshot, limit, None, show_progress=False)
    return recorded


def check_prompts_fit(
    recorded: Requests, tokenizer, window: int, max_new_tokens: int, num_fewshot: int, task: str
) -> None:
    """A prompt that with what is generated or scored overflows the context window would be cut
    on the left by lm-eval without a word: bad input, said before any training. (Texts scored
    whole are cut into windows by lm-eval's rolling log-likelihood by design.)"""
    if recorded.generate:
        lengths = [len(ids) for ids in tokenizer(recorded.generate)["input_ids"]]
        longest = max(lengths)
        if longest + max_new_tokens > window:
            raise HarnessError(
                f"the longest {task} prompt ({num_fewshot}-shot, doc {lengths.index(longest)}) is {longest} tokens; "
                f"with --max-new-tokens {max_new_tokens} it exceeds the model's context window of {window}; "
                f"lower --num-fewshot or --max-new-tokens"
            )
    if recorded.choices:
        joined = [context + continuation for context, continuation in recorded.choices]
        lengths = [len(ids) for ids in tokenizer(joined)["input_ids"]]
        longest = max(lengths)
        if longest > window:
            raise HarnessError(
                f"the longest {task} prompt with its answer ({num_fewshot}-shot) is {longest} tokens, over the model's "
                f"context window of {window}; lower --num-fewshot"
            )


def evaluate(
    model: torch.nn.Module,
    tokenizer,
    tasks: LmEvalTasks,
    *,
    num_fewshot: int,
    limit: int | None,
    batch_size: int,
    max_new_tokens: int,
    max_length: int | None = None,
    show_progress: bool = True,
) -> LmEvalResult:
    """lm-eval's `simple_evaluate` on `model` as it is (a peft model, a merged or compressed one);
    `max_length`: HFLM's window (None: the model's context window)."""
    from lm_eval.models.huggingface import HFLM

    _quiet_lm_eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
    settings = {"batch_size": batch_size, "max_length": lm.max_length}
    return score(lm, tasks, num_fewshot, limit, max_new_tokens, settings, show_progress)


def row_metric(task: str, key: str, tasks: LmEvalTasks) -> str:
    """The row's name of lm-eval's "<metric>,<filter>" of `task`: plain for a task run alone,
    "<task>/<metric>" among several."""
    name = metric_name(key)
    return name if tasks.single else f"{task}/{name}"


def score(
    lm,
    tasks: LmEvalTasks,
    num_fewshot: int,
    limit: int | None,
    max_new_tokens: int,
    settings: dict[str, Any],
    show_progress: bool = True,
) -> LmEvalResult:
    """lm-eval's scores of the tasks with the lm-eval model `lm`, and the settings of the call
    (`settings`: what the caller adds, e.g. its batch size)."""
    # As `lm_eval --gen_kwargs max_gen_toks=N` sets it, so that call reproduces this one.
    out = _evaluate(lm, tasks, num_fewshot, limit, {"max_gen_toks": max_new_tokens}, show_progress)
    metrics: dict[str, float] = {}
    directions: dict[str, bool] = {}
    for name, values in out["results"].items():
        higher = out.get("higher_is_better", {}).get(name, {})
        for key, value in values.items():
            if "," not in key or isinstance(value, (bool, str)) or not isinstance(value, numbers.Real):
                continue  # alias, sample_len, and "N/A" standard errors
            metrics[row_metric(name, key, tasks)] = float(value)
            metric = key.partition(",")[0]
            if metric in higher:
                directions[row_metric(name, key, tasks)] = bool(higher[metric])
    leaves = [leaf.task_name for leaf in tasks.leaves]
    configs = {name: out["configs"][name] for name in leaves}
    first = configs[leaves[0]]
    recorded = {
        "harness": "lm-eval",
        "lm_eval_version": lm_eval_version(),
        "task": tasks.spec,
        "tasks": leaves,
        "task_versions": {name: out.get("versions", {}).get(name) for name in leaves},
        "num_fewshot": {name: out["n-shot"].get(name) for name in leaves},
        "limit": limit,
        "generation_kwargs": first.get("generation_kwargs"),
        "max_gen_toks": max_new_tokens,
        **settings,
        "fewshot_seed": out["config"].get("fewshot_seed"),
        "filters": {name: [f["name"] for f in configs[name].get("filter_list") or []] for name in leaves},
        "data": tasks.data_note(),
    }
    if len(leaves) == 1:  # a task alone: as its one value, as rows recorded before groups existed
        (name,) = leaves
        recorded.update(task_version=recorded.pop("task_versions")[name], filters=recorded["filters"][name])
        recorded["num_fewshot"] = recorded["num_fewshot"][name]
    samples = {name: out["samples"][name] for name in leaves}
    examples = []
    for leaf in tasks.leaves:
        for record in sample_records(samples[leaf.task_name], leaf):
            record["task"] = leaf.task_name
            record["metric"] = row_metric(leaf.task_name, record["metric"], tasks)
            examples.append(record)
    return LmEvalResult(metrics, samples, recorded, examples, directions)


def sample_records(samples: list[dict[str, Any]], task) -> list[dict[str, Any]]:
    """lm-eval's per-sample log of one task as records: one per document, filter and metric, with
    the filtered response, the target and the document's value of the metric. The value is a score
    only where lm-eval aggregates the metric by its mean (accuracy, exact match), so that the mean of
    the scores is the task's value; a corpus-level metric's per-document item (a perplexity's
    log-likelihood and length) is no score (null)."""
    from lm_eval.api.metrics import mean

    means = {metric for metric, aggregate in task.aggregation().items() if aggregate is mean}
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


def documents(samples: dict[str, list[dict[str, Any]]]) -> int:
    """Documents evaluated, over every task: lm-eval logs one sample per document and filter."""
    return sum(len({s["doc_id"] for s in task_samples}) for task_samples in samples.values())


@EVAL_BACKENDS.register("lm-eval-hf")
class LmEvalHF(GenerateBackend):
    """lm-eval's transformers model (HFLM) on the model in memory, adapters included; costs with `generate`."""

    current = True

    def evaluate(self, model, tokenizer, tasks, **settings) -> LmEvalResult:
        return evaluate(model, tokenizer, tasks, **settings)

    def costs(self, model, tokenizer, data, run, device) -> dict[str, Any]:
        return lm_costs(model, tokenizer, data, run, device)
