"""Offline fixtures made by the tests themselves: a tiny random BERT with its own
WordPiece vocabulary, and a tiny GLUE mirror laid out like the hub's Parquet files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import (
    make_tiny_bert,
    make_tiny_glue,
    make_tiny_gsm8k,
    make_tiny_llama,
    save_resnet20_checkpoint,
    tiny_image_dataset,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HARNESS_NO_PROGRESS", "1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_glue(tmp_path_factory) -> Path:
    return make_tiny_glue(tmp_path_factory.mktemp("mirror"))


@pytest.fixture()
def results_dir(tmp_path) -> Path:
    return tmp_path / "results"


@pytest.fixture()
def model(tiny_model):
    """A fresh tiny BERT classifier (2 labels), in eval mode."""
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()


@pytest.fixture(scope="session")
def train_data(tiny_model, tiny_glue):
    """The tiny SST-2 training split, tokenized, as the training loop takes it."""
    from transformers import AutoTokenizer

    from harness.data.resolve import load_split, locate_split
    from harness.suites.base import SUITES

    suite = SUITES.get("glue")()
    split = load_split(locate_split("nyu-mll/glue", "sst2", "train", tiny_glue))
    return suite.prepare(split, AutoTokenizer.from_pretrained(tiny_model), suite.get_task("sst2"), 32)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_gsm8k(tmp_path_factory) -> Path:
    return make_tiny_gsm8k(tmp_path_factory.mktemp("gsm8k-mirror"))


@pytest.fixture(scope="module")
def cifar_mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar-mirror")
    folder = root / "uoft-cs" / "cifar10" / "plain_text"
    folder.mkdir(parents=True)
    for split, n, seed in (("train", 64, 0), ("test", 40, 1)):
        tiny_image_dataset(n, seed=seed).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resnet") / "ckpt.pth"
    save_resnet20_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def lm_config(tiny_gsm8k):
    """lm-eval's own gsm8k config pointed at the tiny mirror by hand, as a user would call lm-eval
    directly: the reference the harness's evaluation is compared with."""
    from tests.support import reference_config

    return reference_config("gsm8k", tiny_gsm8k, {"train": "train", "test": "test"}, "openai/gsm8k/main")


@pytest.fixture(scope="module")
def lm_tasks(tiny_gsm8k):
    """The gsm8k task as the harness builds it from the tiny mirror."""
    from harness.evaluation.lm_eval_tasks import build

    return build("gsm8k", tiny_gsm8k)
