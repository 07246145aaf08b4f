"""The CIFAR suite: ResNet-20, checkpoint loading, top-k metrics, and runs end to end on a
tiny synthetic mirror. One test uses the real CIFAR-10 copy and checkpoint when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.core.errors import HarnessError
from harness.data.resolve import preflight_model, resolve_model
from harness.data.vision_models import OptionAShortcut, resnet20
from harness.results.store import read_results
from harness.suites.base import SUITES
from tests.support import resnet20_parameter_count, run_cifar, save_resnet20_checkpoint, tiny_image_dataset

SHARED = Path(__file__).resolve().parents[3] / "shared"
REAL_DATA = SHARED / "data"
REAL_CKPT = SHARED / "models" / "resnet20-cifar10" / "ckpt.pth"


def test_resnet20_shapes_and_parameter_count():
    model = resnet20().eval()
    out = model(pixel_values=torch.randn(4, 3, 32, 32))
    assert out.logits.shape == (4, 10) and out.loss is None
    assert sum(p.numel() for p in model.parameters()) == resnet20_parameter_count() == 269_722
    loss = model(pixel_values=torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3])).loss
    assert loss.ndim == 0 and loss.item() > 0
    assert sum(p.numel() for p in resnet20(100).parameters()) == resnet20_parameter_count(100)


def test_option_a_shortcut_is_parameter_free_subsample_and_zero_pad():
    model = resnet20()
    shortcuts = [m for m in model.modules() if isinstance(m, OptionAShortcut)]
    assert len(shortcuts) == 2  # the first block of stages 2 and 3
    assert all(not list(m.parameters()) for m in shortcuts)
    assert not any("shortcut" in name for name, _ in model.named_parameters())
    x = torch.randn(2, 16, 32, 32)
    y = OptionAShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 16, 16)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert not y[:, :8].any() and not y[:, 24:].any()


def test_checkpoint_round_trips_through_the_suite(tmp_path):
    saved = save_resnet20_checkpoint(tmp_path / "m" / "ckpt.pth")
    suite = SUITES.get("cifar")()
    task = suite.get_task("cifar10")
    x = torch.randn(3, 3, 32, 32)
    for location in (tmp_path / "m" / "ckpt.pth", tmp_path / "m"):  # the file, or its directory
        model, _ = suite.build_model(str(location), task, tiny_image_dataset(8))
        assert torch.equal(model.eval()(pixel_values=x).logits, saved(pixel_values=x).logits)
    assert suite.head_modules(model) == ("linear",)
    # CIFAR-100 from a CIFAR-10 checkpoint: the body loads, the head is a fresh 100-way Linear.
    model100, _ = suite.build_model(
        str(tmp_path / "m"), suite.get_task("cifar100"), tiny_image_dataset(8, 100, "fine_label")
    )
    assert model100.linear.out_features == 100
    assert torch.equal(model100.conv1.weight, saved.conv1.weight)


def test_resolving_checkpoints_and_the_local_only_alias(tmp_path):
    save_resnet20_checkpoint(tmp_path / "ckpt.pth")
    for name in (str(tmp_path / "ckpt.pth"), str(tmp_path)):
        model = resolve_model(name)
        assert model.source == "checkpoint" and model.location == str((tmp_path / "ckpt.pth").resolve())
        preflight_model(model)  # no AutoConfig on a .pth file
    alias = resolve_model("resnet20-cifar10")
    with pytest.raises(HarnessError, match="pass its checkpoint file instead: --model /path/to/ckpt.pth"):
        preflight_model(alias)
    with pytest.raises(HarnessError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.pth"))


def test_top1_and_top5_against_hand_computed_values():
    suite = SUITES.get("cifar")()
    rng = np.random.default_rng(0)
    n, classes = 6, 100
    scores = rng.permutation(n * classes).reshape(n, classes).astype(float)  # distinct: no ties
    ranks = np.argsort(-scores, axis=1)  # classes from best to worst, per example
    # Labels ranked 1st, 1st, 2nd, 5th, 6th, 50th: top-1 = 2/6, top-5 = 4/6.
    references = [int(ranks[i, r]) for i, r in enumerate((0, 0, 1, 4, 5, 49))]
    metrics = suite.compute_metrics(suite.get_task("cifar100"), scores.tolist(), references)
    assert metrics == pytest.approx({"accuracy": 2 / 6, "top5_accuracy": 4 / 6})
    ten = suite.compute_metrics(suite.get_task("cifar10"), [[0.1, 0.9] + [0.0] * 8, [0.8, 0.2] + [0.0] * 8], [1, 1])
    assert ten == {"accuracy": 0.5}  # CIFAR-10 reports top-1 only


def test_prepare_normalises_and_collates():
    from harness.suites.cifar import MEAN, STD

    suite = SUITES.get("cifar")()
    ds = tiny_image_dataset(5)
    data = suite.prepare(ds, None, suite.get_task("cifar10"), 32)
    batch = data.collate([data.dataset[i] for i in range(5)])
    assert batch["pixel_values"].shape == (5, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == data.references == list(ds["label"])
    first = np.asarray(ds[0]["img"].convert("RGB"), dtype=np.float32) / 255  # (H, W, 3)
    expected = (first - np.array(MEAN, dtype=np.float32)) / np.array(STD, dtype=np.float32)
    assert np.allclose(batch["pixel_values"][0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


# Tiny synthetic mirror -------------------------------------------------------------------


def test_run_none_evaluates_the_checkpoint_as_loaded(tiny_ckpt, cifar_mirror, tmp_path):
    assert run_cifar(tiny_ckpt, cifar_mirror, tmp_path / "r", "--method", "none") == 0
    df = read_results(tmp_path / "r")
    assert len(df) == 1
    row = df.iloc[0]
    assert row["status"] == "ok" and row["suite"] == "cifar" and row["task"] == "cifar10" and row["method"] == "none"
    assert row["metric"] == "accuracy" and 0.0 <= row["score"] <= 1.0
    assert json.loads(row["metrics"]) == {"accuracy": row["score"]}
    assert row["eval_samples"] == 40 and row["train_steps"] == 0 and row["trainable_params"] == 0
    assert row["total_params"] == 269_722 and row["latency_bs1_p50_ms"] > 0
    import hashlib

    # identity by content: the same weights copied elsewhere are the same experiment
    assert row["model_hub_id"] == "checkpoint-sha256:" + hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest()[:16]


def test_run_full_trains_two_steps(tiny_ckpt, cifar_mirror, tmp_path):
    assert (
        run_cifar(tiny_ckpt, cifar_mirror, tmp_path / "r", "--method", "full", "--max-steps", "2", "--batch-size", "16")
        == 0
    )
    row = read_results(tmp_path / "r").iloc[0]
    assert row["status"] == "ok" and row["train_steps"] == 2 and row["trainable_params"] == 269_722
    assert np.isfinite(row["final_train_loss"])


def test_default_alias_without_a_checkpoint_is_one_line_bad_input(cifar_mirror, tmp_path, capsys):
    code = main(
        [
            "run",
            "--suite",
            "cifar",
            "--task",
            "cifar10",
            "--method",
            "none",
            "--data-dir",
            str(cifar_mirror),
            "--results",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'resnet20-cifar10'" in err and "--model /path/to/ckpt.pth" in err
    assert not (tmp_path / "r").exists()


def test_data_without_the_task_columns_is_bad_input_before_any_step(tiny_ckpt, tmp_path, capsys):
    # CIFAR-100's labels are in fine_label; this mirror has only label: `prepare` refuses it, as one line.
    folder = tmp_path / "mirror" / "uoft-cs" / "cifar100" / "cifar100"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        tiny_image_dataset(8).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    code = main(
        [
            "run",
            "--suite",
            "cifar",
            "--task",
            "cifar100",
            "--model",
            str(tiny_ckpt),
            "--method",
            "full",
            "--data-dir",
            str(tmp_path / "mirror"),
            "--results",
            str(tmp_path / "r"),
            "--quiet",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lacks column(s) ['fine_label']" in err
    assert not list((tmp_path / "r").rglob("*.parquet"))  # no row written


@pytest.mark.skipif(
    not (REAL_CKPT.is_file() and (REAL_DATA / "uoft-cs" / "cifar10").is_dir()),
    reason="the shared CIFAR-10 copy and ResNet-20 checkpoint are not present",
)
def test_real_checkpoint_on_500_real_test_images(tmp_path):
    assert (
        run_cifar(
            REAL_CKPT,
            REAL_DATA,
            tmp_path / "r",
            "--method",
            "none",
            "--max-eval-samples",
            "500",
            "--max-train-samples",
            "8",
        )
        == 0
    )
    row = read_results(tmp_path / "r").iloc[0]
    assert row["status"] == "ok" and row["eval_samples"] == 500
    assert 0.7 <= row["score"] <= 0.9
