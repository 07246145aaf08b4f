"""lm-eval tasks with their data read from a local mirror in the hub's Parquet layout: the redirect
rule on a task config, task names, metric names, primary metrics, and (with the shared mirror)
lm-eval's own tasks built on redirected configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.core.errors import HarnessError

pytest.importorskip("lm_eval")

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared data mirror at {SHARED}")

ARC_ROWS = [
    {
        "id": f"q{i}",
        "question": f"Which thing number {i} is right?",
        "choices": {"text": [f"first {i}", f"second {i}", f"third {i}"], "label": ["A", "B", "C"]},
        "answerKey": "ABC"[i % 3],
    }
    for i in range(6)
]


def write_split(root: Path, hub_id: str, config: str, split: str, rows: list[dict]) -> Path:
    from datasets import Dataset

    folder = root / hub_id / config
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}-00000-of-00001.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    return path


def arc_config(**splits) -> dict:
    config = {
        "task": "arc_easy",
        "dataset_path": "allenai/ai2_arc",
        "dataset_name": "ARC-Easy",
        "training_split": "train",
        "validation_split": "validation",
        "test_split": "test",
        "fewshot_split": None,
    }
    config.update(splits)
    return config


# point_at_mirror ----------------------------------------------------------------------------


def test_present_splits_become_parquet_data_files(tmp_path):
    from harness.evaluation.lm_eval_tasks import point_at_mirror

    files = {
        s: str(write_split(tmp_path, "allenai/ai2_arc", "ARC-Easy", s, ARC_ROWS))
        for s in ("train", "validation", "test")
    }
    config = arc_config()
    redirect = point_at_mirror(config, tmp_path)
    assert redirect.task == "arc_easy"
    assert redirect.dataset == "allenai/ai2_arc/ARC-Easy"
    assert redirect.missing == []
    assert redirect.files == {s: [f] for s, f in files.items()}
    assert config["dataset_path"] == "parquet"
    assert config["dataset_name"] is None
    assert config["dataset_kwargs"] == {"data_files": {s: [f] for s, f in files.items()}}
    assert (config["training_split"], config["validation_split"], config["test_split"]) == (
        "train",
        "validation",
        "test",
    )


def test_missing_unscored_splits_are_set_to_null(tmp_path):
    from harness.evaluation.lm_eval_tasks import point_at_mirror

    test = str(write_split(tmp_path, "allenai/ai2_arc", "ARC-Easy", "test", ARC_ROWS))
    config = arc_config(fewshot_split="dev")
    redirect = point_at_mirror(config, tmp_path)
    assert redirect.missing == ["training_split", "validation_split", "fewshot_split"]
    assert config["training_split"] is None
    assert config["validation_split"] is None
    assert config["fewshot_split"] is None
    assert config["test_split"] == "test"
    assert config["dataset_kwargs"] == {"data_files": {"test": [test]}}


def test_a_lone_config_is_read_from_default(tmp_path):
    from harness.evaluation.lm_eval_tasks import point_at_mirror

    validation = str(write_split(tmp_path, "baber/piqa", "default", "validation", ARC_ROWS))
    config = {"task": "piqa", "dataset_path": "baber/piqa", "dataset_name": None, "training_split": "train",
              "validation_split": "validation", "test_split": None}  # fmt: skip
    redirect = point_at_mirror(config, tmp_path)
    assert redirect.dataset == "baber/piqa/default"
    assert redirect.files == {"validation": [validation]}
    assert redirect.missing == ["training_split"]


@pytest.mark.parametrize(
    ("splits", "scored"),
    [({}, "test"), ({"test_split": None}, "validation")],
)
def test_a_missing_scored_split_names_the_paths_tried(tmp_path, splits, scored):
    from harness.evaluation.lm_eval_tasks import point_at_mirror

    write_split(tmp_path, "allenai/ai2_arc", "ARC-Easy", "train", ARC_ROWS)
    config = arc_config(**splits)
    with pytest.raises(HarnessError) as info:
        point_at_mirror(config, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert f"split {scored!r}" in message
    folder = tmp_path / "allenai" / "ai2_arc" / "ARC-Easy"
    for tried in (folder / f"{scored}-*.parquet", folder / scored / "*.parquet", folder / f"{scored}.parquet"):
        assert str(tried) in message


@pytest.mark.parametrize(
    "config",
    [
        {"task": "custom", "dataset_path": "allenai/ai2_arc", "custom_dataset": lambda **kw: {}, "test_split": "test"},
        {"task": "nodata", "test_split": "test"},
        {"task": "nodata", "dataset_path": None, "test_split": "test"},
    ],
)
def test_a_config_without_hub_data_is_left_alone(tmp_path, config):
    from harness.evaluation.lm_eval_tasks import point_at_mirror

    before = dict(config)
    assert point_at_mirror(config, tmp_path) is None
    assert config == before


# task_names ---------------------------------------------------------------------------------


def test_an_unknown_task_suggests_close_names():
    from harness.evaluation.lm_eval_tasks import task_names

    with pytest.raises(HarnessError) as info:
        task_names("arc_esay")
    message = str(info.value)
    assert "\n" not in message
    assert "'arc_esay'" in message
    assert "did you mean" in message and "arc_easy" in message


def test_task_names_split_a_comma_list():
    from harness.evaluation.lm_eval_tasks import task_names

    assert task_names(" arc_easy, piqa ,commonsense") == ["arc_easy", "piqa", "commonsense"]


@pytest.mark.parametrize(("spec", "words"), [("arc_easy,arc_easy", "twice"), ("", "empty"), (" , ", "empty")])
def test_task_names_refuse_duplicates_and_nothing(spec, words):
    from harness.evaluation.lm_eval_tasks import task_names

    with pytest.raises(HarnessError, match=words):
        task_names(spec)


# metric names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "name"),
    [
        ("acc,none", "acc"),
        ("acc", "acc"),
        ("acc_stderr,none", "acc_stderr"),
        ("exact_match,flexible-extract", "exact_match_flexible"),
        ("exact_match,strict-match", "exact_match_strict"),
        ("exact_match_stderr,strict-match", "exact_match_strict_stderr"),
    ],
)
def test_metric_name(key, name):
    from harness.evaluation.lm_eval_tasks import metric_name

    assert metric_name(key) == name


@pytest.mark.parametrize(
    ("spec", "metric"),
    [
        ("arc_easy", "acc"),
        ("wikitext", "word_perplexity"),
        ("gsm8k", "exact_match_strict"),
        ("mmlu", "mmlu/acc"),
        ("arc_easy,piqa", "average/acc"),
        ("commonsense", "commonsense/acc"),
    ],
)
def test_primary_metric(spec, metric):
    from harness.evaluation.lm_eval_tasks import primary_metric

    assert primary_metric(spec) == metric


# lm-eval's tasks on redirected configs ------------------------------------------------------


def test_lm_eval_reads_the_redirected_files(tmp_path):
    """A tiny ARC mirror without a training split: lm-eval's arc_easy reads the test rows as they are."""
    from harness.evaluation.lm_eval_tasks import build

    write_split(tmp_path, "allenai/ai2_arc", "ARC-Easy", "validation", ARC_ROWS[:2])
    write_split(tmp_path, "allenai/ai2_arc", "ARC-Easy", "test", ARC_ROWS)
    tasks = build("arc_easy", tmp_path)
    (leaf,) = tasks.leaves
    assert tasks.single
    assert not leaf.has_training_docs()
    assert [d["question"] for d in leaf.test_docs()] == [r["question"] for r in ARC_ROWS]
    assert [d["answerKey"] for d in leaf.test_docs()] == [r["answerKey"] for r in ARC_ROWS]
    assert tasks.data_note() == {
        "arc_easy": {
            "dataset": "allenai/ai2_arc/ARC-Easy",
            "splits": ["test", "validation"],
            "set_to_null": ["training_split"],
        }
    }


def test_build_names_the_missing_scored_split(tmp_path):
    from harness.evaluation.lm_eval_tasks import build

    write_split(tmp_path, "allenai/ai2_arc", "ARC-Easy", "train", ARC_ROWS)
    with pytest.raises(HarnessError, match=r"scored on split 'test' of allenai/ai2_arc/ARC-Easy"):
        build("arc_easy", tmp_path)


@needs_shared
def test_mmlu_anatomy_reads_test_and_dev():
    from harness.evaluation.lm_eval_tasks import build

    tasks = build("mmlu_anatomy", SHARED)
    (redirect,) = tasks.redirects
    folder = SHARED / "cais" / "mmlu" / "anatomy"
    assert redirect.dataset == "cais/mmlu/anatomy"
    assert redirect.files == {
        "test": [str(folder / "test-00000-of-00001.parquet")],
        "dev": [str(folder / "dev-00000-of-00001.parquet")],
    }
    assert redirect.missing == []
    (leaf,) = tasks.leaves
    assert len(leaf.test_docs()) == 135


@needs_shared
def test_wikitext_sets_its_absent_splits_to_null():
    from harness.evaluation.lm_eval_tasks import build

    tasks = build("wikitext", SHARED)
    (leaf,) = tasks.leaves
    assert leaf.config.training_split is None
    assert leaf.config.validation_split is None
    assert tasks.data_note() == {
        "wikitext": {
            "dataset": "EleutherAI/wikitext_document_level/wikitext-2-raw-v1",
            "splits": ["test"],
            "set_to_null": ["training_split", "validation_split"],
        }
    }
    assert len(leaf.test_docs()) == 62  # the mirror's README: 62 test pages


@needs_shared
def test_lm_eval_documents_equal_the_parquet_rows():
    import pyarrow.parquet as pq

    from harness.evaluation.lm_eval_tasks import build

    (leaf,) = build("arc_easy", SHARED).leaves
    table = pq.read_table(SHARED / "allenai" / "ai2_arc" / "ARC-Easy" / "test-00000-of-00001.parquet")
    docs = leaf.test_docs()
    assert len(docs) == table.num_rows == 2376
    assert [d["question"] for d in docs.select(range(5))] == table.column("question").to_pylist()[:5]
    assert [d["answerKey"] for d in docs.select(range(5))] == table.column("answerKey").to_pylist()[:5]
