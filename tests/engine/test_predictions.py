"""Per-example predictions: one table per run beside its row, with the fixed subset's own ids,
scores whose mean is the row's metric, and predictions that are the model's own."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats

from harness.cli import main
from harness.core.errors import HarnessError
from harness.results.predictions import predictions_path, predictions_table, read_predictions, write_predictions
from harness.results.store import read_results, result_files
from harness.spec.schema import PREDICTION_SCHEMA
from harness.spec.subsets import fixed_subset
from tests.support import tiny_run_args

EVAL_SAMPLES = 20  # of the tiny mirror's 48 validation examples: a shuffled subset


def _validation(mirror: Path, config: str, split: str = "validation"):
    from harness.data.resolve import load_split, locate_split

    return load_split(locate_split("nyu-mll/glue", config, split, mirror))


def _run(model, mirror, results, *extra, status: int = 0) -> None:
    args = tiny_run_args(model, mirror, results, "--max-eval-samples", str(EVAL_SAMPLES), "--no-kernel-profile", *extra)
    assert main(args) == status


def _rows(results) -> pd.DataFrame:
    return read_results(results).sort_values("created_at").reset_index(drop=True)


@pytest.fixture(scope="module")
def glue_runs(tiny_model, tiny_glue, tmp_path_factory):
    """SST-2: the checkpoint as loaded (seed 0), LoRA (seed 0) and the checkpoint again (seed 1)."""
    results = tmp_path_factory.mktemp("results")
    for method, seed in (("none", 0), ("lora:r=4", 0), ("none", 1)):
        _run(tiny_model, tiny_glue, results, "--method", method, "--seed", str(seed))
    return results, _rows(results)


def test_every_run_has_one_prediction_per_example_of_the_fixed_subset(glue_runs, tiny_glue):
    results, rows = glue_runs
    subset = fixed_subset(_validation(tiny_glue, "sst2"), EVAL_SAMPLES)
    expected_ids = list(subset["idx"])
    assert expected_ids != list(range(EVAL_SAMPLES))  # a shuffled subset: the data's ids, not positions
    labels = dict(zip(subset["idx"], subset["label"]))
    assert len(rows) == 3 and set(rows["status"]) == {"ok"}
    assert rows["method"].nunique() == 2 and rows["seed"].nunique() == 2
    for _, row in rows.iterrows():
        table = read_predictions(results, row["job_hash"], row["run_id"])
        assert len(table) == row["eval_samples"] == EVAL_SAMPLES
        assert list(table["example_id"]) == expected_ids  # same ids, same order, every method and seed
        assert set(table["split"]) == {"validation"} and set(table["metric"]) == {"accuracy"}
        assert set(table["job_hash"]) == {row["job_hash"]} and set(table["run_id"]) == {row["run_id"]}
        assert list(table["reference"]) == [float(labels[i]) for i in table["example_id"]]
        assert list(table["score"]) == [float(p == r) for p, r in zip(table["prediction"], table["reference"])]
        # The row's accuracy is exactly the mean of the per-example scores.
        assert table["score"].mean() == row["score"] == json.loads(row["metrics"])["accuracy"]


def test_predictions_are_the_argmax_of_the_models_logits(glue_runs, tiny_model, tiny_glue):
    """The checkpoint as loaded (method none): each example, looked up by its id and run alone,
    gives the stored prediction."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    results, rows = glue_runs
    row = rows[(rows["method"] == "none") & (rows["seed"] == 0)].iloc[0]
    table = read_predictions(results, row["job_hash"], row["run_id"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    sentences = dict(zip(*(_validation(tiny_glue, "sst2")[c] for c in ("idx", "sentence"))))
    checked = table.iloc[:6]
    with torch.no_grad():
        logits = [model(**tokenizer(sentences[i], return_tensors="pt")).logits[0] for i in checked["example_id"]]
    assert list(checked["prediction"]) == [float(x.argmax()) for x in logits]
    assert table["prediction"].nunique() == 2  # both classes predicted: the check can tell them apart


def test_row_readers_skip_the_prediction_tables(glue_runs):
    results, rows = glue_runs
    tables = sorted((results / "_predictions").glob("*.parquet"))
    assert [p.name for p in tables] == sorted(f"{h}-{r}.parquet" for h, r in zip(rows["job_hash"], rows["run_id"]))
    assert not set(tables) & set(result_files(results))
    assert len(list(results.glob("*/*/*.parquet"))) == len(rows) == 3  # the documented glob: rows only
    assert pq.read_schema(tables[0]).names == PREDICTION_SCHEMA.names
    assert pq.read_schema(tables[0]).types == PREDICTION_SCHEMA.types


def test_a_regression_task_stores_values_and_no_per_example_score(tiny_model, tiny_glue, results_dir):
    _run(tiny_model, tiny_glue, results_dir, "--task", "stsb", "--method", "lora:r=4")
    (row,) = [r for _, r in _rows(results_dir).iterrows()]
    table = read_predictions(results_dir, row["job_hash"], row["run_id"])
    metrics = json.loads(row["metrics"])
    assert len(table) == EVAL_SAMPLES and table["score"].isna().all() and set(table["metric"]) == {"pearson"}
    subset = fixed_subset(_validation(tiny_glue, "stsb"), EVAL_SAMPLES)
    assert list(table["example_id"]) == list(subset["idx"])
    assert list(table["reference"]) == list(subset["label"])
    assert stats.pearsonr(table["prediction"], table["reference"]).statistic == metrics["pearson"] == row["score"]
    assert stats.spearmanr(table["prediction"], table["reference"]).statistic == metrics["spearman"]


def test_a_failed_run_writes_no_predictions(tiny_model, tiny_glue, results_dir, monkeypatch):
    from harness.suites.base import Suite

    def broken(*args, **kwargs):
        raise RuntimeError("latency meter broke")

    monkeypatch.setattr(Suite, "inference_costs", broken)  # after the evaluation, before the row
    _run(tiny_model, tiny_glue, results_dir, "--method", "none", status=1)  # 1: a run that failed
    (row,) = [r for _, r in _rows(results_dir).iterrows()]
    assert row["status"] == "failed" and "latency meter broke" in row["error"]
    assert not (results_dir / "_predictions").exists()
    with pytest.raises(HarnessError, match="no predictions for run"):
        read_predictions(results_dir, row["job_hash"], row["run_id"])


# Suite level: several splits, corpus-level primary metrics --------------------------------


def _evaluate(suite_name, task_name, model_dir, mirror, num_labels):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from harness.suites.base import SUITES

    suite = SUITES.get(suite_name)()
    task = suite.get_task(task_name)
    # What load_eval and evaluate read of a resolved run.
    run = SimpleNamespace(max_eval_samples=EVAL_SAMPLES, eval_batch_size=8, max_length=32, precision="fp32")
    eval_sets = suite.load_eval(task, suite.locate(task, mirror), run)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=num_labels, ignore_mismatched_sizes=True
    ).eval()
    evaluation = suite.evaluate(
        model, AutoTokenizer.from_pretrained(model_dir), task, eval_sets, run, torch.device("cpu"), False
    )
    return eval_sets, evaluation


def test_each_split_has_its_own_records_and_metric(tiny_model, tiny_glue):
    """MNLI: matched and mismatched, each scored under its own row metric."""
    eval_sets, evaluation = _evaluate("glue", "mnli", tiny_model, tiny_glue, 3)
    table = predictions_table("h", "r", evaluation.examples).to_pandas()
    assert list(table["split"].unique()) == ["validation_matched", "validation_mismatched"]
    for (split, suffix, ds), metric in zip(eval_sets, ("accuracy", "accuracy_mismatched")):
        part = table[table["split"] == split]
        assert list(part["metric"].unique()) == [metric]
        assert list(part["example_id"]) == list(ds["idx"])
        assert part["score"].mean() == evaluation.metrics[metric]


def test_a_corpus_level_primary_metric_leaves_the_score_null(tiny_model, tiny_glue):
    """CoLA's Matthews correlation is no mean over examples; predictions and references give it."""
    from sklearn.metrics import matthews_corrcoef

    _, evaluation = _evaluate("glue", "cola", tiny_model, tiny_glue, 2)
    table = predictions_table("h", "r", evaluation.examples).to_pandas()
    assert table["score"].isna().all() and set(table["metric"]) == {"matthews_corr"}
    assert matthews_corrcoef(table["reference"], table["prediction"]) == evaluation.metrics["matthews_corr"]


def test_image_predictions_are_the_top1_class_of_the_logits():
    from harness.suites.base import SUITES

    suite = SUITES.get("cifar")()
    task = suite.get_task("cifar10")
    logits = list(np.random.default_rng(0).normal(size=(30, 10)).astype(np.float32))
    references = [int(i % 10) for i in range(30)]
    records = suite.example_records(
        task, "test", "", list(range(100, 130)), logits, SimpleNamespace(references=references)
    )
    assert [r["prediction"] for r in records] == [float(np.argmax(x)) for x in logits]
    scores = [r["score"] for r in records]
    assert np.mean(scores) == suite.compute_metrics(task, logits, references)["accuracy"]
    assert [r["example_id"] for r in records] == list(range(100, 130))


def test_split_without_an_id_column_is_numbered_by_row_before_subsetting():
    from datasets import Dataset

    from harness.suites.base import EXAMPLE_ID, example_ids, with_example_ids

    data = Dataset.from_dict({"x": [f"row {i}" for i in range(30)]})
    numbered = fixed_subset(with_example_ids(data, None), 7)
    assert example_ids(numbered, None) == [int(x.split()[1]) for x in numbered["x"]]
    assert EXAMPLE_ID in numbered.column_names
    own = Dataset.from_dict({"idx": [5, 9, 2], "x": ["a", "b", "c"]})
    assert with_example_ids(own, "idx").column_names == ["idx", "x"] and example_ids(own, "idx") == [5, 9, 2]


# The table itself ---------------------------------------------------------------------------


def test_the_table_is_typed_and_refuses_unknown_columns(tmp_path):
    records = [{"split": "validation", "example_id": 3, "metric": "accuracy", "score": 1.0, "prediction": 1.0}]
    path = write_predictions(tmp_path, "abc", "r1", records)
    assert path == predictions_path(tmp_path, "abc", "r1") == tmp_path / "_predictions" / "abc-r1.parquet"
    assert pq.read_schema(path).types == PREDICTION_SCHEMA.types
    table = read_predictions(tmp_path, "abc", "r1")
    assert table.loc[0, "example_id"] == 3 and pd.isna(table.loc[0, "reference"]) and table.loc[0, "job_hash"] == "abc"
    assert write_predictions(tmp_path, "abc", "r2", []) is None and not predictions_path(tmp_path, "abc", "r2").exists()
    with pytest.raises(KeyError, match="logits"):
        predictions_table("abc", "r1", [{**records[0], "logits": [0.1]}])


# Generation (gsm8k through lm-eval) ----------------------------------------------------------


def test_gsm8k_stores_lm_evals_samples_whose_mean_is_the_rows_exact_match(tiny_llama, tiny_gsm8k, results_dir):
    pytest.importorskip("lm_eval")
    from datasets import Dataset

    args = ["run", "--suite", "gsm8k", "--model", str(tiny_llama), "--data-dir", str(tiny_gsm8k)]
    args += ["--results", str(results_dir), "--method", "none", "--max-eval-samples", "4", "--max-new-tokens", "8"]
    assert main([*args, "--eval-batch-size", "4", "--latency-repeats", "1", "--no-kernel-profile", "--quiet"]) == 0
    (row,) = [r for _, r in _rows(results_dir).iterrows()]
    table = read_predictions(results_dir, row["job_hash"], row["run_id"])
    metrics = json.loads(row["metrics"])
    assert set(table["split"]) == {"test"} and table["prediction"].isna().all()
    test = Dataset.from_parquet(str(next((tiny_gsm8k / "openai" / "gsm8k" / "main").glob("test-*.parquet"))))
    for metric, lm_filter in (("exact_match_strict", "strict-match"), ("exact_match_flexible", "flexible-extract")):
        part = table[table["metric"] == metric]
        assert set(part["filter"]) == {lm_filter}
        assert list(part["example_id"]) == [0, 1, 2, 3]  # lm-eval's limit: the first documents
        assert list(part["target"]) == test["answer"][:4]  # lm-eval's gsm8k target: the whole answer
        assert part["response"].notna().all()
        assert part["score"].mean() == metrics[metric]
    assert table[table["metric"] == row["metric"]]["score"].mean() == row["score"]
