"""CIFAR-10 and CIFAR-100 image classification (Krizhevsky 2009), evaluated on the test split.

Metrics: top-1 accuracy; top-5 accuracy beside it when there are more than 10 classes
(both by scikit-learn). Predictions are each example's logits, so any top-k can be computed.
The model is He et al.'s CIFAR ResNet-20 (harness.data.vision_models), loaded from a local
checkpoint (`--model path/to/ckpt.pth`, or a directory holding ckpt.pth).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.errors import HarnessError
from harness.data.models import ModelAlias
from harness.data.vision_models import checkpoint_file, load_resnet20
from harness.suites.base import SUITES, Prepared, TrainDefaults
from harness.suites.image import DecodedImages, FixedSize, ImageSuite, ImageTask, NormalizeCollate, check_image_columns

# Per-channel statistics of the CIFAR-10 training images, as the ResNet-20 checkpoints were trained with.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
IMAGE_SIZE = 32


@dataclass(frozen=True)
class CifarTask(ImageTask):
    image_column: str = "img"
    label_column: str = "label"
    num_labels: int = 10


CIFAR_TASKS = {
    t.name: t
    for t in [
        # Hub columns: img (Image), label (ClassLabel, 10 classes).
        CifarTask(
            name="cifar10",
            dataset="uoft-cs/cifar10",
            config="plain_text",
            train_split="train",
            eval_splits=(("test", ""),),
            primary_metric="accuracy",
            summary="32x32 images, 10 classes",
            image_column="img",
            label_column="label",
            num_labels=10,
        ),
        # Hub columns: img (Image), fine_label (ClassLabel, 100 classes), coarse_label (20
        # superclasses); the benchmark is the 100 fine labels.
        CifarTask(
            name="cifar100",
            dataset="uoft-cs/cifar100",
            config="cifar100",
            train_split="train",
            eval_splits=(("test", ""),),
            primary_metric="accuracy",
            summary="32x32 images, 100 classes (top-1, top-5)",
            image_column="img",
            label_column="fine_label",
            num_labels=100,
        ),
    ]
}


# Decoded one row at a time and normalised per batch by the shared image pipeline.
collate = NormalizeCollate(MEAN, STD)


@SUITES.register("cifar")
class Cifar(ImageSuite):
    """CIFAR-10/100 image classification (test-set top-1, top-5 for CIFAR-100) with a CIFAR ResNet."""

    paper = "Krizhevsky, Learning Multiple Layers of Features from Tiny Images, 2009"
    default_model = "resnet20-cifar10"
    model_aliases = {
        # He et al.'s CIFAR ResNet-20 (0.27M parameters), built by harness.data.vision_models. There is no
        # hub copy or package of these weights: pass a checkpoint ({net: state_dict}) with --model.
        "resnet20-cifar10": ModelAlias(
            "resnet20-cifar10",
            local_only=True,
            note="CIFAR ResNet-20 (He et al. 2016); no download: pass --model /path/to/ckpt.pth",
        ),
    }
    tasks = CIFAR_TASKS
    # Batch 128 and weight decay 1e-4 as He et al. 2016 (sec. 4.2) train CIFAR ResNets; they run
    # 64k iterations (~164 epochs) from scratch. Fine-tuning a trained checkpoint needs far less:
    # 3 epochs is the budget default for CPU runs (raise it with --epochs); the learning rate comes
    # from the method. No warm-up (the paper warms up only ResNet-110). max_length is unused:
    # images are 32x32.
    defaults = TrainDefaults(
        epochs=3,
        batch_size=128,
        eval_batch_size=256,
        max_length=IMAGE_SIZE,
        warmup_ratio=0.0,
        weight_decay=1e-4,
        source="He et al. 2016 (ResNet), sec. 4.2: batch 128, weight decay 1e-4; epochs shortened for a fine-tuning budget",
    )

    def build_model(self, location: str, task: CifarTask, train_dataset):
        # The data's columns are checked by `prepare`, which the job runs on the training split
        # straight after this and before any step (loading the checkpoint does not read the data).
        path = checkpoint_file(location)
        if path is None:
            raise HarnessError(
                f"suite 'cifar' builds a CIFAR ResNet-20 from a checkpoint; {location!r} is not a .pth file "
                f"or a directory holding ckpt.pth (pass --model /path/to/ckpt.pth)"
            )
        return load_resnet20(path, task.num_labels), None

    @staticmethod
    def _check_columns(task: CifarTask, dataset) -> None:
        check_image_columns(dataset, task.image_column, task.label_column, f"CIFAR {task.name}")
        n = getattr(dataset.features.get(task.label_column), "num_classes", None)
        if n is not None and n != task.num_labels:
            raise HarnessError(f"CIFAR {task.name} expects {task.num_labels} classes but the data has {n}")

    def required_columns(self, task: CifarTask) -> tuple[str, ...]:
        return (task.image_column,)

    def label_column(self, task: CifarTask) -> tuple[str, int]:
        return task.label_column, task.num_labels

    def head_modules(self, model: torch.nn.Module) -> tuple[str, ...]:
        return ("linear",)

    def prepare(self, dataset, processor, task: CifarTask, max_length: int) -> Prepared:
        self._check_columns(task, dataset)
        images = DecodedImages(dataset, task.image_column, task.label_column, FixedSize(IMAGE_SIZE))
        return Prepared(images, collate, images.references())
