"""The vtab suite: the 19 VTAB-1k tasks, the 800/200/test rule with exact example ids, the
one-line errors for a missing or malformed mirror, the direct-resize preprocessing, and a LoRA run
end to end on a tiny generated mirror whose score is recomputed from the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.core.errors import HarnessError
from harness.data.image_classifiers import ImageSpec
from harness.results.store import read_results
from harness.spec.subsets import fixed_subset
from harness.suites.base import SUITES
from harness.suites.vtab import SELECTION_EXAMPLES, TRAIN_EXAMPLES, Vtab

POOL = 1000  # rows of train800val200
TEST = 20
NATURAL = ["caltech101", "cifar100", "dtd", "oxford_flowers102", "oxford_iiit_pet", "svhn", "sun397"]
SPECIALIZED = ["patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]
STRUCTURED = [
    "clevr_count",
    "clevr_dist",
    "dmlab",
    "kitti_dist",
    "dsprites_loc",
    "dsprites_ori",
    "smallnorb_azi",
    "smallnorb_ele",
]


def write_task(root: Path, task: str, split: str, ids, classes: int, seed: int) -> None:
    """A split of tiny 8x8 images whose `id` column tells the examples apart."""
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    folder = root / "vtab-1k" / task
    folder.mkdir(parents=True, exist_ok=True)
    images = [PILImage.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)) for _ in ids]
    features = Features({"image": Image(), "label": ClassLabel(num_classes=classes), "id": Value("int64")})
    columns = {"image": images, "label": [int(i) % classes for i in ids], "id": [int(i) for i in ids]}
    Dataset.from_dict(columns, features=features).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


# Pool ids in a scrambled order, so that "the first 800" is a matter of rows, never of id order.
POOL_IDS = {"eurosat": np.random.default_rng(7).permutation(POOL) + 10_000, "patch_camelyon": np.arange(POOL)}
TEST_IDS = {"eurosat": np.arange(TEST) + 50_000, "patch_camelyon": np.arange(TEST) + 60_000}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vtab-mirror")
    for seed, (task, classes) in enumerate((("eurosat", 10), ("patch_camelyon", 2))):
        write_task(root, task, "train800val200", POOL_IDS[task], classes, seed)
        write_task(root, task, "test", TEST_IDS[task], classes, 100 + seed)
    return root


@pytest.fixture(scope="module")
def suite() -> Vtab:
    return SUITES.get("vtab")()


def test_the_nineteen_tasks_in_three_groups(suite):
    assert list(suite.tasks) == NATURAL + SPECIALIZED + STRUCTURED
    groups = {
        g: [t.name for t in suite.tasks.values() if t.group == g] for g in ("natural", "specialized", "structured")
    }
    assert groups == {"natural": NATURAL, "specialized": SPECIALIZED, "structured": STRUCTURED}
    # task_adaptation's class counts for a few tasks whose count is not the source data set's
    classes = {t.name: t.num_labels for t in suite.tasks.values()}
    assert (classes["clevr_count"], classes["kitti_dist"], classes["dsprites_ori"], classes["smallnorb_ele"]) == (
        8,
        4,
        16,
        9,
    )
    assert (TRAIN_EXAMPLES, SELECTION_EXAMPLES) == (800, 200)


@pytest.mark.parametrize("task", ["eurosat", "patch_camelyon"])
def test_train_is_the_first_800_selection_the_last_200_score_the_test_split(suite, mirror, task):
    t = suite.get_task(task)
    sources = suite.locate(t, mirror)
    assert list(sources) == ["train800", "test"]  # the 200 are not among a job's splits
    train = suite.load(sources["train800"])
    selection = suite.load_selection(t, mirror)
    test = suite.load(sources["test"])
    assert train["id"] == POOL_IDS[task][:800].tolist()
    assert selection["id"] == POOL_IDS[task][800:].tolist()
    assert len(train) == 800 and len(selection) == 200 and not set(train["id"]) & set(selection["id"])
    assert test["id"] == TEST_IDS[task].tolist() and t.selection_split == "val200"


def test_a_task_missing_from_the_mirror_is_one_line_naming_the_paths_tried(mirror, tmp_path, capsys):
    code = main(
        ["run", "--suite", "vtab", "--task", "dtd", "--method", "lora", "--model", "vit-tiny-6"]
        + ["--data-dir", str(mirror), "--results", str(tmp_path / "r"), "--quiet"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        "'train800val200' of vtab-1k/dtd" in err and str(mirror / "vtab-1k" / "dtd" / "train800val200-*.parquet") in err
    )
    assert not list((tmp_path / "r").rglob("*.parquet"))


def test_a_pool_of_another_size_and_no_mirror_are_refused(suite, tmp_path):
    write_task(tmp_path, "dtd", "train800val200", range(999), 47, 0)
    write_task(tmp_path, "dtd", "test", range(4), 47, 1)
    with pytest.raises(HarnessError, match="holds 999 examples; VTAB-1k's holds 1000"):
        suite.locate(suite.get_task("dtd"), tmp_path)
    with pytest.raises(HarnessError, match="no hub copy.*--data-dir"):
        suite.locate(suite.get_task("dtd"), None)


def test_preprocessing_is_a_bicubic_resize_to_the_input_size_with_no_crop_or_flip(suite, mirror):
    from PIL import Image

    t = suite.get_task("eurosat")
    train = suite.load(suite.locate(t, mirror)["train800"]).select(range(3))
    spec = ImageSpec(16, (0.5, 0.4, 0.3), (0.2, 0.25, 0.5))
    data = suite.prepare(train, spec, t, 16)
    batch = data.collate([data.dataset[i] for i in range(3)])
    again = data.collate([data.dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 16, 16) and np.array_equal(
        batch["pixel_values"], again["pixel_values"]
    )
    resized = np.asarray(train[0]["image"].convert("RGB").resize((16, 16), Image.Resampling.BICUBIC), np.float32) / 255
    expected = (resized - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    assert np.allclose(batch["pixel_values"][0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert batch["labels"].tolist() == data.references == train["label"]


def test_lora_run_trains_on_the_800_and_reports_test_accuracy(mirror, tmp_path, monkeypatch):
    prepared, logits = [], []
    prepare, predictions = Vtab.prepare, Vtab.predictions

    def spy_prepare(self, dataset, *args):
        prepared.append(list(dataset["id"]))
        return prepare(self, dataset, *args)

    def spy_predictions(self, outputs, task):
        rows = predictions(self, outputs, task)
        logits.extend(rows)
        return rows

    monkeypatch.setattr(Vtab, "prepare", spy_prepare)
    monkeypatch.setattr(Vtab, "predictions", spy_predictions)
    code = main(
        ["run", "--suite", "vtab", "--task", "eurosat", "--method", "lora", "--model", "vit-tiny-6"]
        + ["--data-dir", str(mirror), "--results", str(tmp_path / "r"), "--max-steps", "2", "--batch-size", "2"]
        + ["--max-eval-samples", "6", "--eval-batch-size", "6", "--latency-repeats", "1"]
        + ["--set", "latency_warmup=0", "--quiet"]
    )
    assert code == 0
    row = read_results(tmp_path / "r").iloc[0]
    assert row["status"] == "ok" and (row["suite"], row["task"], row["method"]) == ("vtab", "eurosat", "lora")
    assert row["train_samples"] == 800 and row["train_steps"] == 2 and row["eval_split"] == "test"
    # The training examples are the first 800 rows, the evaluated ones the test split's; no val200 row anywhere.
    from datasets import load_dataset

    test_file = str(mirror / "vtab-1k" / "eurosat" / "test-00000-of-00001.parquet")
    scored = fixed_subset(load_dataset("parquet", data_files={"test": test_file}, split="test"), 6)
    assert prepared == [POOL_IDS["eurosat"][:800].tolist(), scored["id"]]
    assert not set(POOL_IDS["eurosat"][800:].tolist()) & set(sum(prepared, []))
    accuracy = float(np.mean(np.argmax(np.stack(logits), axis=1) == np.asarray(scored["label"])))
    assert len(logits) == row["eval_samples"] == 6
    assert row["score"] == pytest.approx(accuracy, abs=1e-12)
    assert json.loads(row["metrics"]) == {"accuracy": row["score"]}


def test_list_tasks_shows_the_nineteen(capsys):
    assert main(["list", "tasks"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    listed = [cols[1] for cols in rows if cols and cols[0] == "vtab"]
    assert listed == NATURAL + SPECIALIZED + STRUCTURED


def test_a_trial_is_scored_on_val200_the_rows_training_never_sees(suite, mirror):
    """`--evaluate-on selection` on VTAB-1k: the job trains on the 800 and scores the 200 (its own
    selection split, no size to give), recorded as such; a size given is refused."""
    from harness.engine.resolve import resolve
    from harness.spec.run import RunSpec

    values = dict(suite="vtab", task="eurosat", method="bitfit", model="vit-tiny-6", data_dir=str(mirror))
    run, _, task, _, sources = resolve(RunSpec(**values, evaluate_on="selection"))
    train, selection = suite.split_training(task, suite.load(sources[task.train_split]), run)
    assert list(train["id"]) == POOL_IDS["eurosat"][:800].tolist()
    assert list(selection["id"]) == POOL_IDS["eurosat"][800:].tolist()
    assert suite.selection_split(task, run).startswith("val200: rows 800..999 of train800val200")
    reported = resolve(RunSpec(**values))[0]
    assert suite.split_training(task, suite.load(sources[task.train_split]), reported)[1] is None
    with pytest.raises(HarnessError, match="has its own selection split"):
        suite.split_training(task, train, resolve(RunSpec(**values, selection_samples=100))[0])
