"""The imagenet suite: class lists, the subset logit restriction, model and head choice,
random-init aliases, preprocessing and label mapping, ImageNet-100 filtering, and a run end to
end on a tiny synthetic Imagenette mirror. One test reads the real Imagenette copy when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.core.errors import HarnessError
from harness.data.image_classifiers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM_INIT_MODELS,
    ClassSubsetLogits,
    ImageSpec,
    build_image_classifier,
    image_spec,
)
from harness.data.models import MODELS
from harness.data.resolve import preflight_model, resolve_model
from harness.results.store import read_results
from harness.suites.base import SUITES
from harness.suites.image import RandomHorizontalFlip
from harness.suites.imagenet_classes import IMAGENET100_WNIDS, IMAGENET_WNIDS, IMAGENETTE, imagenet_index

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
IMAGENETTE_IDS = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)
IMAGEWOOF_IDS = (155, 159, 162, 167, 182, 193, 207, 229, 258, 273)
TINY_VIT = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
)


@pytest.fixture(scope="module")
def suite():
    return SUITES.get("imagenet")()


def test_class_lists(suite):
    assert len(IMAGENET_WNIDS) == 1000 and list(IMAGENET_WNIDS) == sorted(set(IMAGENET_WNIDS))
    tasks = suite.tasks
    assert tasks["imagenette"].imagenet_ids == IMAGENETTE_IDS
    assert tasks["imagewoof"].imagenet_ids == IMAGEWOOF_IDS
    assert [len(tasks[t].imagenet_ids) for t in ("imagenette", "imagewoof", "imagenet100")] == [10, 10, 100]
    for name in ("imagenette", "imagewoof", "imagenet100"):
        ids = tasks[name].imagenet_ids
        assert len(set(ids)) == len(ids)
        # Each index points at the task's own class among the 1000: its wnid, in label order.
        assert tuple(IMAGENET_WNIDS[i] for i in ids) == tasks[name].wnids
    # Known ImageNet-1k positions: tench 0, English springer 217, gas pump 571, parachute 701, bonnet 452.
    assert [IMAGENET_WNIDS[i] for i in (0, 217, 571, 701, 452)] == [
        "n01440764",
        "n02102040",
        "n03425413",
        "n03888257",
        "n02869837",
    ]
    # CMC's list, in its order: bonnet, green mamba, langur, Doberman, gyromitra, ...
    assert len(set(IMAGENET100_WNIDS)) == 100
    assert tasks["imagenet100"].imagenet_ids[:5] == (452, 64, 374, 236, 993)
    assert imagenet_index("n01440764") == 0 and imagenet_index("n15075141") == 999  # tench, toilet tissue
    assert tasks["imagenet1k"].imagenet_ids is None and tasks["imagenet1k"].num_labels == 1000
    assert tasks["imagenet100"].metrics == ("accuracy", "top5_accuracy") and tasks["imagenette"].metrics == (
        "accuracy",
    )


class _Thousand(torch.nn.Module):
    """A stand-in 1000-class model whose logit for class c is c + 1000 * row."""

    def __init__(self):
        super().__init__()
        from transformers import PretrainedConfig

        self.config = PretrainedConfig(num_labels=1000)
        self.classifier = torch.nn.Linear(1, 1)

    def forward(self, pixel_values, **_):
        from transformers.modeling_outputs import ImageClassifierOutput

        rows = torch.arange(pixel_values.shape[0], dtype=torch.float32)[:, None] * 1000
        return ImageClassifierOutput(logits=rows + torch.arange(1000, dtype=torch.float32))


def test_subset_restriction_picks_exactly_the_subset_columns(suite):
    model = ClassSubsetLogits(_Thousand(), IMAGENETTE_IDS)
    out = model(pixel_values=torch.zeros(2, 3, 4, 4), labels=torch.tensor([9, 0]))
    assert out.logits.tolist() == [[float(i) for i in IMAGENETTE_IDS], [1000.0 + i for i in IMAGENETTE_IDS]]
    expected = torch.nn.functional.cross_entropy(out.logits, torch.tensor([9, 0]))  # over the 10 columns only
    assert torch.allclose(out.loss, expected)
    assert suite.head_modules(model) == ("classifier",)
    assert "class_ids" not in model.state_dict()  # the checkpoint's names are unchanged
    with pytest.raises(HarnessError, match="distinct ids"):
        ClassSubsetLogits(_Thousand(), (0, 0, 5))


def _save_vit(directory: Path, num_labels: int, preprocessor: dict | None = None) -> Path:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    ViTForImageClassification(ViTConfig(**TINY_VIT, num_labels=num_labels)).save_pretrained(directory)
    if preprocessor is not None:
        (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return directory


@pytest.fixture(scope="module")
def tiny_vit_1k(tmp_path_factory) -> Path:
    """A tiny random ViT with an ImageNet-sized head (1000 classes), saved like a hub checkpoint."""
    return _save_vit(tmp_path_factory.mktemp("vit1k"), 1000)


def test_head_choice_and_image_spec(tiny_vit_1k, tmp_path):
    # An ImageNet head on a subset task: kept and restricted, not replaced.
    model, spec = build_image_classifier(str(tiny_vit_1k), 10, IMAGENETTE_IDS)
    assert isinstance(model, ClassSubsetLogits) and model.model.classifier.out_features == 1000
    assert spec == ImageSpec(32, IMAGENET_MEAN, IMAGENET_STD)  # no image processor saved: ImageNet statistics
    # On the full 1000 classes, or with a head of the task's size: the model as it is.
    model, _ = build_image_classifier(str(tiny_vit_1k), 1000, None)
    assert not isinstance(model, ClassSubsetLogits) and model.classifier.out_features == 1000
    ten = _save_vit(tmp_path / "ten", 10, {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    model, spec = build_image_classifier(str(ten), 10, IMAGENETTE_IDS)
    assert model.classifier.out_features == 10 and spec == ImageSpec(32, (0.5,) * 3, (0.5,) * 3)
    # Any other head: a fresh one of the task's size.
    model, _ = build_image_classifier(str(_save_vit(tmp_path / "five", 5)), 10, IMAGENETTE_IDS)
    assert model.classifier.out_features == 10


def test_imagenet_statistics_fallback_is_a_warning_naming_the_model(tiny_vit_1k, tmp_path, caplog):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_vit_1k)
    with caplog.at_level("WARNING", logger="harness"):
        assert image_spec(str(tiny_vit_1k), config) == ImageSpec(32, IMAGENET_MEAN, IMAGENET_STD)
    [record] = [r for r in caplog.records if r.name == "harness"]
    message = record.getMessage()
    assert record.levelname == "WARNING" and repr(str(tiny_vit_1k)) in message
    assert str(IMAGENET_MEAN) in message and str(IMAGENET_STD) in message
    # A usable image processor, or a random-init model (ImageNet's statistics by design): no warning.
    caplog.clear()
    own = _save_vit(tmp_path / "own", 10, {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]})
    with caplog.at_level("WARNING", logger="harness"):
        assert image_spec(str(own), config).mean == (0.5,) * 3
        image_spec("random-init:vit-tiny", config)
    assert not [r for r in caplog.records if r.name == "harness"]


def test_random_init_aliases_are_recorded_as_such_and_reproducible():
    assert {a for a, info in MODELS if info.random_init} == set(RANDOM_INIT_MODELS)
    ref = resolve_model("vit-tiny-6")
    assert (ref.source, ref.hub_id, ref.location) == ("random-init", "random-init:vit-tiny-6", "random-init:vit-tiny-6")
    preflight_model(ref)  # nothing to fetch
    weights = []
    for _ in range(2):
        torch.manual_seed(0)  # as the job's set_seed before build_model
        model, spec = build_image_classifier(ref.location, 10, IMAGENETTE_IDS)
        weights.append(model.classifier.weight.detach().clone())
    assert torch.equal(*weights) and spec == ImageSpec(224)
    assert len(model.vit.layers) == 6 and model.config.hidden_size == 192 and model.classifier.out_features == 10
    model, spec = build_image_classifier(resolve_model("resnet-tiny").location, 100, None)
    assert model.classifier[-1].out_features == 100 and spec.size == 224


def test_default_lora_targets_for_vit(tiny_vit_1k):
    from transformers import AutoModelForImageClassification

    from harness.methods.peft_family import default_lora_targets

    model = AutoModelForImageClassification.from_pretrained(tiny_vit_1k)
    assert default_lora_targets(model) == ["q_proj", "v_proj"]
    assert default_lora_targets(ClassSubsetLogits(model, IMAGENETTE_IDS)) == ["q_proj", "v_proj"]


# Tiny synthetic mirrors ------------------------------------------------------------------


def _images(n: int, names, labels, seed: int = 0, size=(40, 30), label_feature=None):
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    images = [PILImage.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]
    feature = label_feature or ClassLabel(names=list(names))
    return Dataset.from_dict(
        {"image": images, "label": list(labels)}, features=Features({"image": Image(), "label": feature})
    )


def _write(root: Path, hub_id: str, config: str | None, split: str, dataset) -> None:
    folder = root / hub_id / config if config else root / hub_id
    folder.mkdir(parents=True, exist_ok=True)
    dataset.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))


@pytest.fixture(scope="module")
def imagenette_mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet-mirror")
    names = [n for _, n in IMAGENETTE]
    for split, n, seed in (("train", 24, 0), ("validation", 12, 1)):
        _write(root, "imagenette", "224px", split, _images(n, names, [i % 10 for i in range(n)], seed))
    return root


def test_prepare_crops_normalises_and_flips_only_training_data(suite, imagenette_mirror):
    task = suite.get_task("imagenette")
    sources = suite.locate(task, imagenette_mirror)
    spec = ImageSpec(32, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    train, val = (suite.prepare(suite.load(sources[s]), spec, task, 224) for s in ("train", "validation"))
    assert isinstance(train.dataset.transform, RandomHorizontalFlip)
    assert not isinstance(val.dataset.transform, RandomHorizontalFlip)
    batch = val.collate([val.dataset[i] for i in range(4)])
    assert (
        batch["pixel_values"].shape == (4, 3, 32, 32) and batch["labels"].tolist() == [0, 1, 2, 3] == val.references[:4]
    )
    # 40x30 -> shorter side 37 (32 / 0.875) -> 49x37, then the central 32x32.
    from PIL import Image

    raw = suite.load(sources["validation"])[0]["image"].convert("RGB").resize((49, 37), Image.Resampling.BILINEAR)
    crop = np.asarray(raw, dtype=np.float32)[2:34, 8:40] / 255
    expected = (crop - np.array(spec.mean, dtype=np.float32)) / np.array(spec.std, dtype=np.float32)
    assert np.allclose(batch["pixel_values"][0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_labels_are_matched_by_name_whatever_the_data_order(suite):
    task = suite.get_task("imagewoof")
    hub_order = [
        "Australian terrier",
        "Border terrier",
        "Samoyed",
        "Beagle",
        "Shih-Tzu",
        "English foxhound",
        "Rhodesian ridgeback",
        "Dingo",
        "Golden retriever",
        "Old English sheepdog",
    ]
    data = _images(10, hub_order, range(10))
    prepared = suite.prepare(data, ImageSpec(32), task, 224)
    # Data label 0 (Australian terrier) is task label 5 (n02096294), 4 (Shih-Tzu) is task label 0, ...
    assert prepared.references == [5, 4, 8, 2, 0, 3, 1, 9, 6, 7]
    by_wnid = _images(10, [w for w, _ in IMAGENETTE], range(10))
    assert suite.prepare(by_wnid, ImageSpec(32), suite.get_task("imagenette"), 224).references == list(range(10))
    with pytest.raises(HarnessError, match="not the task's"):
        suite.prepare(_images(10, [f"c{i}" for i in range(10)], range(10)), ImageSpec(32), task, 224)


def test_imagenet100_keeps_its_classes_and_renumbers_them(suite, tmp_path):
    from datasets import ClassLabel

    thousand = ClassLabel(names=list(IMAGENET_WNIDS))
    labels = [452, 0, 64, 999, 91, 452, 5]  # bonnet (0), tench (out), green mamba (1), out, out, bonnet, out
    _write(tmp_path, "ILSVRC/imagenet-1k", None, "validation", _images(7, (), labels, label_feature=thousand))
    _write(tmp_path, "ILSVRC/imagenet-1k", None, "train", _images(7, (), labels, label_feature=thousand))
    task = suite.get_task("imagenet100")
    data = suite.load(suite.locate(task, tmp_path)["validation"])
    assert list(data["label"]) == [452, 64, 452]
    assert suite.prepare(data, ImageSpec(32), task, 224).references == [0, 1, 0]
    full = suite.load(suite.locate(suite.get_task("imagenet1k"), tmp_path)["validation"])
    assert len(full) == 7 and suite.prepare(full, ImageSpec(32), suite.get_task("imagenet1k"), 224).references == labels


def test_top1_and_top5(suite):
    scores = np.tile(np.arange(100, dtype=np.float32), (3, 1))  # class 99 best, then 98, ...
    metrics = suite.compute_metrics(suite.get_task("imagenet100"), list(scores), [99, 95, 10])
    assert metrics == pytest.approx({"accuracy": 1 / 3, "top5_accuracy": 2 / 3})


def test_run_end_to_end_on_a_tiny_imagenette(tiny_vit_1k, imagenette_mirror, tmp_path):
    code = main(
        [
            "run",
            "--suite",
            "imagenet",
            "--task",
            "imagenette",
            "--model",
            str(tiny_vit_1k),
            "--data-dir",
            str(imagenette_mirror),
            "--results",
            str(tmp_path / "r"),
            "--max-train-samples",
            "16",
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--method",
            "full",
            "--quiet",
            "--latency-repeats",
            "2",
        ]
    )
    assert code == 0
    row = read_results(tmp_path / "r").iloc[0]
    assert row["status"] == "ok" and (row["suite"], row["task"], row["method"]) == ("imagenet", "imagenette", "full")
    assert row["train_steps"] == 2 and row["train_samples"] == 16 and row["eval_samples"] == 12
    assert json.loads(row["metrics"]).keys() == {"accuracy"} and 0.0 <= row["score"] <= 1.0
    assert row["trainable_params"] == row["total_params"] and np.isfinite(row["final_train_loss"])


@pytest.mark.skipif(
    not (REAL_DATA / "imagenette" / "224px").is_dir(), reason="the shared Imagenette copy is not present"
)
def test_real_imagenette_mirror_has_the_task_classes(suite):
    task = suite.get_task("imagenette")
    sources = suite.locate(task, REAL_DATA)
    val = suite.load(sources["validation"])
    assert len(val) == 3925 and val.features["label"].names == [n for _, n in IMAGENETTE]
    assert suite.label_map(task, val) is None  # the data's labels are the task's
    prepared = suite.prepare(val.select(range(2)), ImageSpec(224), task, 224)
    assert prepared.collate([prepared.dataset[0]])["pixel_values"].shape == (1, 3, 224, 224)
