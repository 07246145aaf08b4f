"""A fixed list of run specs keeps its job hashes: how a run is declared, resolved and hashed may
be reorganised, but the same request must stay the same job (results already in a store stay
done). The hashes below were computed before the package was split into layers; the five of specs
that take LoRA's default rate changed, as they had to, when that default became the LoRA paper's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.engine.resolve import resolve
from harness.spec.run import RunSpec


def _image_mirror(
    root: Path, hub_id: str, config: str, image_column: str, label_column: str, classes: list[str], size: int
) -> Path:
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    folder = root / hub_id / config
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "test", "validation"):
        images = [PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(4)]
        features = Features({image_column: Image(), label_column: ClassLabel(names=classes)})
        data = Dataset.from_dict(
            {image_column: images, label_column: [i % len(classes) for i in range(4)]}, features=features
        )
        data.to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    return root


@pytest.fixture(scope="module")
def image_mirror(tmp_path_factory) -> Path:
    from harness.suites.base import SUITES

    root = tmp_path_factory.mktemp("hash-mirror")
    _image_mirror(root, "uoft-cs/cifar10", "plain_text", "img", "label", [f"c{i}" for i in range(10)], 32)
    imagenette = SUITES.get("imagenet").tasks["imagenette"]
    _image_mirror(root, imagenette.dataset, imagenette.config, "image", "label", [f"n{i}" for i in range(10)], 32)
    return root


# (suite mirror fixture, run spec values, job hash): each line a different corner of the identity.
FIXED = [
    (
        "tiny_glue",
        dict(suite="glue", task="sst2", method="lora", model="minilm-l6", max_train_samples=64),
        "cb5e32e3bf626772",
    ),
    (
        "tiny_glue",
        dict(
            suite="glue",
            task="mrpc",
            method="dora:r=8,merge=true",
            model="minilm-l6",
            seed=3,
            lr=1e-3,
            precision="bf16",
        ),
        "95322d56c7e363fa",
    ),
    (
        "tiny_glue",
        dict(
            suite="glue",
            task="stsb",
            method="wanda:sparsity=0.5+lora",
            model="minilm-l6",
            max_steps=5,
            gradient_accumulation_steps=2,
            gradient_checkpointing=True,
            lr_scheduler="cosine",
        ),
        "6e8b1ac8d344fafc",
    ),
    (
        "tiny_glue",
        dict(
            suite="glue",
            task="sst2",
            method="full",
            model="minilm-l6",
            epochs=1.5,
            batch_size=8,
            eval_batch_size=16,
            max_length=64,
            warmup_ratio=0.1,
            weight_decay=0.01,
            max_grad_norm=0.5,
            max_eval_samples=20,
            max_train_tokens=5000,
            kernel_profile=False,
            latency_repeats=5,
            latency_warmup=1,
        ),
        "054ba952d2c26328",
    ),
    (
        "tiny_glue",
        dict(suite="glue", task="sst2", method="lora+int8", model="minilm-l6", device="cpu"),
        "bf37f4ffaf179ac5",
    ),
    (
        "tiny_gsm8k",
        dict(
            suite="gsm8k",
            task="gsm8k",
            method="lora",
            model="smollm2-135m",
            num_fewshot=5,
            max_new_tokens=32,
            max_eval_samples=4,
            packing=True,
        ),
        "e70dcf02f472c4b6",
    ),
    (
        "tiny_gsm8k",
        dict(suite="gsm8k", task="gsm8k", method="none", model="smollm2-135m", max_eval_samples=2),
        "fda92b8f6ab5f6b1",
    ),
    (
        "image_mirror",
        dict(suite="cifar", task="cifar10", method="ia3", model="resnet-tiny", max_train_samples=4),
        "5989b97b62eb78ea",
    ),
    (
        "image_mirror",
        dict(suite="imagenet", task="imagenette", method="lora:r=4", model="vit-tiny-6", max_train_samples=4, seed=1),
        "311ed590ba04057e",
    ),
]


@pytest.mark.parametrize("mirror,values,expected", FIXED, ids=[f"{v['suite']}-{v['method']}" for _, v, _ in FIXED])
def test_a_fixed_run_spec_keeps_its_job_hash(mirror, values, expected, request, tmp_path):
    spec = RunSpec.build(
        **{"device": "cpu", **values},
        data_dir=str(request.getfixturevalue(mirror)),
        results_dir=str(tmp_path / "results"),
    )
    assert resolve(spec)[0].job_hash == expected
