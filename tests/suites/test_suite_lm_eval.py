"""Suite lm-eval: any lm-eval task scores as lm-eval called directly on the same weights; gsm8k is
one of its tasks; retention; perplexity for compression; bad input is one line with nothing written.

The equality tests use the real evaluation sets of the shared mirror (skipped where it is absent)
on a tiny random Llama with a handful of documents per task: what is compared is the harness's
route (its data rule, its task building, the model after the method) against lm-eval's own."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from tests.support import make_tiny_llama, reference_config

pytest.importorskip("lm_eval")

MIRROR = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_mirror = pytest.mark.skipif(not (MIRROR / "allenai").is_dir(), reason="the shared data mirror is absent")

# Each task's folder in the mirror and the splits lm-eval reads there; the ones its YAML names that
# the mirror lacks are set to None by hand, as a user calling lm-eval on these files would.
REFERENCE = {
    "arc_easy": ("allenai/ai2_arc/ARC-Easy", {"train": "train", "validation": "validation", "test": "test"}, {}),
    "arc_challenge": (
        "allenai/ai2_arc/ARC-Challenge",
        {"train": "train", "validation": "validation", "test": "test"},
        {},
    ),
    "piqa": ("baber/piqa/default", {"validation": "validation"}, {"training_split": None}),
    "winogrande": ("allenai/winogrande/winogrande_xl", {"validation": "validation"}, {"training_split": None}),
    "boolq": ("aps/super_glue/boolq", {"validation": "validation"}, {"training_split": None}),
    "openbookqa": ("allenai/openbookqa/main", {"train": "train", "validation": "validation", "test": "test"}, {}),
    "social_iqa": ("lighteval/siqa/default", {"train": "train", "validation": "validation"}, {}),
    "mmlu_anatomy": ("cais/mmlu/anatomy", {"test": "test", "dev": "dev"}, {}),
    "wikitext": (
        "EleutherAI/wikitext_document_level/wikitext-2-raw-v1",
        {"test": "test"},
        {"training_split": None, "validation_split": None},
    ),
}
LIMIT = 3


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    # Room for BoolQ's passages and WikiText's pages in its small byte-level vocabulary.
    return make_tiny_llama(tmp_path_factory.mktemp("llama-4k"), max_positions=4096)


def _run(model, results, task, *extra, mirror=MIRROR):
    return main(
        [
            "run",
            "--suite",
            "lm-eval",
            "--task",
            task,
            "--model",
            str(model),
            "--data-dir",
            str(mirror),
            "--results",
            str(results),
            "--max-eval-samples",
            str(LIMIT),
            "--eval-batch-size",
            "4",
            "--max-length",
            "1024",
            "--latency-repeats",
            "1",
            "--quiet",
            *extra,
        ]
    )


def _row(results):
    from harness.results.store import read_results

    return read_results(results).sort_values("created_at").iloc[-1]


def _direct(model: Path, tasks: list[str], limit: int = LIMIT, extra: str = ""):
    """lm-eval called directly, from the checkpoint on disk, with hand-written configs."""
    from lm_eval import simple_evaluate

    configs = []
    for name in tasks:
        folder, splits, nulls = REFERENCE[name]
        configs.append(reference_config(name, MIRROR, splits, folder, **nulls))
    return simple_evaluate(
        model="hf", model_args=f"pretrained={model},device=cpu{extra}", tasks=configs, limit=limit, batch_size=4
    )


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err), err
    return err[-1]


@needs_mirror
def test_every_commonsense_mmlu_and_wikitext_task_scores_as_lm_eval_called_directly(llama, tmp_path):
    tasks = list(REFERENCE)
    assert _run(llama, tmp_path / "r", ",".join(tasks), "--method", "none") == 0
    row = _row(tmp_path / "r")
    metrics = json.loads(row["metrics"])
    direct = _direct(llama, tasks)["results"]
    for name in tasks:
        keys = ["word_perplexity", "byte_perplexity", "bits_per_byte"] if name == "wikitext" else ["acc", "acc_stderr"]
        if name not in ("boolq", "winogrande", "social_iqa", "mmlu_anatomy", "wikitext"):
            keys.append("acc_norm")
        for key in keys:
            assert metrics[f"{name}/{key}"] == pytest.approx(direct[name][f"{key},none"], rel=1e-6), (name, key)
    # The comma list's score: the unweighted mean of the tasks' first metric, lm-eval's group aggregate.
    firsts = [metrics[f"{n}/word_perplexity" if n == "wikitext" else f"{n}/acc"] for n in tasks]
    assert row["metric"] == "average/acc" and row["score"] == pytest.approx(metrics["average/acc"])
    accuracies = [f for n, f in zip(tasks, firsts) if n != "wikitext"]
    assert metrics["average/acc"] == pytest.approx(sum(accuracies) / len(accuracies))
    assert row["eval_samples"] == LIMIT * len(tasks)
    settings = json.loads(row["eval_settings"])
    assert settings["data"]["piqa"]["set_to_null"] == ["training_split"]
    assert settings["data"]["mmlu_anatomy"]["splits"] == ["dev", "test"]


@needs_mirror
def test_a_single_task_keeps_plain_metric_names_and_its_samples_are_the_predictions(llama, tmp_path):
    assert _run(llama, tmp_path / "r", "arc_easy", "--method", "none") == 0
    row = _row(tmp_path / "r")
    direct = _direct(llama, ["arc_easy"])
    assert row["metric"] == "acc" and row["score"] == pytest.approx(direct["results"]["arc_easy"]["acc,none"])
    assert bool(row["higher_is_better"]) is True
    predictions = pd.concat(pd.read_parquet(p) for p in (tmp_path / "r" / "_predictions").glob("*.parquet"))
    acc = predictions[predictions["metric"] == "acc"].sort_values("example_id")
    assert list(acc["example_id"]) == list(range(LIMIT))
    truth = {s["doc_id"]: s["acc"] for s in direct["samples"]["arc_easy"]}
    assert list(acc["score"]) == [float(truth[i]) for i in range(LIMIT)]


@needs_mirror
def test_perplexity_is_the_primary_score_of_a_compressed_model_and_lower_is_better(llama, tmp_path):
    assert _run(llama, tmp_path / "r", "wikitext", "--method", "int4") == 0
    row = _row(tmp_path / "r")
    assert row["metric"] == "word_perplexity" and bool(row["higher_is_better"]) is False
    assert row["weight_bits"] > 4  # 4-bit codes and their group scales
    # Calibration needs training examples, and wikitext has none in the mirror: one line.
    assert _run(llama, tmp_path / "g", "wikitext", "--method", "gptq") == 2


@needs_mirror
def test_a_context_length_sets_the_perplexity_window_as_lm_evals_max_length(llama, tmp_path):
    assert _run(llama, tmp_path / "r", "wikitext", "--method", "none", "--set", "context_length=256") == 0
    row = _row(tmp_path / "r")
    direct = _direct(llama, ["wikitext"], extra=",max_length=256")["results"]["wikitext"]
    assert row["score"] == pytest.approx(direct["word_perplexity,none"], rel=1e-6)
    assert json.loads(row["eval_settings"])["max_length"] == 256
    full = _direct(llama, ["wikitext"])["results"]["wikitext"]["word_perplexity,none"]
    assert row["score"] != pytest.approx(full, rel=1e-6)  # shorter windows: less context, another value


@needs_mirror
def test_retention_scores_the_tasks_before_and_after_the_method(llama, tmp_path):
    assert (
        _run(
            llama,
            tmp_path / "r",
            "arc_easy",
            "--method",
            "lora",
            "--max-steps",
            "2",
            "--batch-size",
            "2",
            "--set",
            "train_data=arc_challenge",
            "--set",
            "retention_tasks=piqa,wikitext",
        )
        == 0
    )
    row = _row(tmp_path / "r")
    retention = json.loads(row["retention"])
    base = _direct(llama, ["piqa", "wikitext"])["results"]
    # Before the method: the loaded checkpoint, as lm-eval scores it from disk.
    assert retention["piqa"]["before"] == pytest.approx(base["piqa"]["acc,none"])
    assert retention["wikitext"]["before"] == pytest.approx(base["wikitext"]["word_perplexity,none"])
    # Signed so that forgetting is negative: accuracy after minus before, perplexity before minus after.
    piqa, wiki = retention["piqa"], retention["wikitext"]
    assert piqa["change"] == pytest.approx(piqa["after"] - piqa["before"])
    assert wiki["change"] == pytest.approx(wiki["before"] - wiki["after"])
    assert row["retention_change"] == pytest.approx((piqa["change"] + wiki["change"]) / 2)
    train_format = json.loads(row["train_format"])
    assert train_format["sources"] == ["arc_challenge"] and train_format["loss_on"] == "answer"
    assert row["train_data"] == "arc_challenge"


def test_gsm8k_is_one_task_of_the_suite_with_the_same_scores(tiny_llama, tiny_gsm8k, tmp_path):
    common = ["--method", "none", "--max-new-tokens", "6", "--max-length", "256"]
    assert _run(tiny_llama, tmp_path / "a", "gsm8k", *common, mirror=tiny_gsm8k) == 0
    argv = ["run", "--suite", "gsm8k", "--model", str(tiny_llama), "--data-dir", str(tiny_gsm8k)]
    argv += ["--results", str(tmp_path / "b"), "--max-eval-samples", str(LIMIT), "--eval-batch-size", "4"]
    assert main([*argv, "--latency-repeats", "1", "--quiet", *common]) == 0
    ours, old = _row(tmp_path / "a"), _row(tmp_path / "b")
    assert json.loads(ours["metrics"]) == json.loads(old["metrics"])
    assert old["metric"] == "exact_match_flexible" and ours["metric"] == "exact_match_strict"


# Bad input ----------------------------------------------------------------------------------


def test_an_unknown_task_is_one_line_with_close_matches(llama, tmp_path, capsys):
    assert _run(llama, tmp_path / "r", "arc_esay", "--method", "none", mirror=tmp_path) == 2
    line = _one_line_error(capsys)
    assert "no task or group 'arc_esay'" in line and "arc_easy" in line
    assert not (tmp_path / "r").exists()


@needs_mirror
def test_a_task_whose_data_is_not_in_the_mirror_names_the_paths_tried(llama, tmp_path, capsys):
    assert _run(llama, tmp_path / "r", "arc_easy,hellaswag", "--method", "none") == 2
    line = _one_line_error(capsys)
    assert "'hellaswag' is scored on split 'validation' of Rowan/hellaswag/default" in line
    assert str(MIRROR / "Rowan" / "hellaswag" / "default" / "validation-*.parquet") in line
    assert not (tmp_path / "r").exists()


def test_a_perplexity_task_on_an_encoder_is_refused(tiny_model, tmp_path, capsys):
    assert _run(tiny_model, tmp_path / "r", "wikitext", "--method", "none", mirror=tmp_path) == 2
    assert "is not a causal language model" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()
