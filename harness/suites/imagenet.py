"""ImageNet-1k (Russakovsky et al., IJCV 2015) and three of its class subsets, image classification.

Tasks (evaluated on the validation split; `harness list tasks`):
- imagenette: 10 easy classes (hub `imagenette`, 224px; fast.ai's Imagenette);
- imagewoof: 10 dog breeds (hub `frgfm/imagewoof`, 320px);
- imagenet100: the 100 classes of Tian et al.'s CMC list, from the user's ImageNet-1k copy
  (hub `ILSVRC/imagenet-1k`), labels renumbered 0..99 in that list's order;
- imagenet1k: all 1000 classes (hub `ILSVRC/imagenet-1k`; gated: pass a local mirror with
  --data-dir, or log in to the hub).
The class lists are data, in `harness/suites/imagenet_classes.py`.

Metrics: top-1 accuracy, and top-5 beside it for the 100- and 1000-class tasks, by
scikit-learn over each example's logits. An ImageNet-1k checkpoint (1000 outputs) on a subset
task keeps its head restricted to the subset's classes, for evaluation and for training
(`harness.data.image_classifiers.ClassSubsetLogits`); a checkpoint whose head has the task's size is
used as is; any other head is replaced by a fresh one.

Preprocessing is the standard ImageNet evaluation protocol at the model's input size: resize
the shorter side to 256, center-crop 224 (for another size s: resize s/0.875, crop s), then
normalise with the model's image-processor mean and std (ImageNet's when it has none).
Training adds a random horizontal flip and nothing else: a fine-tuning budget, not a
from-scratch recipe (no RandAugment, mixup or random-resized crops as DeiT trains).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.core.errors import HarnessError
from harness.data.image_classifiers import (
    DEFAULT_IMAGE_SIZE,
    IMAGENET_CLASSES,
    ImageSpec,
    build_image_classifier,
    head_modules,
)
from harness.data.models import ModelAlias
from harness.data.resolve import DataSource
from harness.suites.base import SUITES, Prepared, TrainDefaults
from harness.suites.image import (
    DecodedImages,
    ImageSuite,
    ImageTask,
    NormalizeCollate,
    RandomHorizontalFlip,
    ResizeCenterCrop,
    check_image_columns,
)
from harness.suites.imagenet_classes import IMAGENET100_WNIDS, IMAGENETTE, IMAGEWOOF, imagenet_indices

IMAGENET_HUB_ID = "ILSVRC/imagenet-1k"


@dataclass(frozen=True)
class ImageNetTask(ImageTask):
    # The task's classes in label order, as WordNet ids; empty: all 1000 ImageNet-1k classes.
    wnids: tuple[str, ...] = ()
    # The class names the data's ClassLabel may carry, in the same order (matched case-insensitively).
    names: tuple[str, ...] = ()
    # How the data labels an image: "task" - 0..n-1 in the data's own ClassLabel (Imagenette,
    # Imagewoof), matched to the task's classes by name; "imagenet" - its ImageNet-1k index
    # (ILSVRC/imagenet-1k), kept only for the task's classes and renumbered in their order.
    labelled_by: str = "task"

    @property
    def num_labels(self) -> int:
        return len(self.wnids) or IMAGENET_CLASSES

    @property
    def imagenet_ids(self) -> tuple[int, ...] | None:
        """The task's classes as ImageNet-1k indices, in label order (None: all of them, as they are)."""
        return imagenet_indices(self.wnids) if self.wnids else None


def _subset_task(name: str, dataset: str, config: str | None, classes, summary: str) -> ImageNetTask:
    return ImageNetTask(
        name=name,
        dataset=dataset,
        config=config,
        train_split="train",
        eval_splits=(("validation", ""),),
        primary_metric="accuracy",
        summary=summary,
        wnids=tuple(w for w, _ in classes),
        names=tuple(n for _, n in classes),
    )


IMAGENET_TASKS = {
    t.name: t
    for t in [
        # Hub columns: image (Image), label (ClassLabel, 10 classes named as in imagenet_classes).
        _subset_task("imagenette", "imagenette", "224px", IMAGENETTE, "10 easy ImageNet classes (Imagenette)"),
        _subset_task("imagewoof", "frgfm/imagewoof", "320px", IMAGEWOOF, "10 ImageNet dog breeds (Imagewoof)"),
        # Hub columns: image (Image), label (ClassLabel, the 1000 ImageNet-1k classes).
        ImageNetTask(
            name="imagenet100",
            dataset=IMAGENET_HUB_ID,
            config=None,
            train_split="train",
            eval_splits=(("validation", ""),),
            primary_metric="accuracy",
            labelled_by="imagenet",
            summary="100 ImageNet-1k classes (CMC list, Tian et al. 2020), top-1 and top-5",
            wnids=IMAGENET100_WNIDS,
        ),
        ImageNetTask(
            name="imagenet1k",
            dataset=IMAGENET_HUB_ID,
            config=None,
            train_split="train",
            eval_splits=(("validation", ""),),
            primary_metric="accuracy",
            labelled_by="imagenet",
            summary="ImageNet-1k, 1000 classes (validation, top-1 and top-5)",
        ),
    ]
}


@dataclass(frozen=True)
class ClassSubsetSource(DataSource):
    """An ImageNet-1k split of which only some classes are kept (ImageNet-100 from ImageNet-1k)."""

    label_column: str = "label"
    class_ids: tuple[int, ...] = ()


def keep_classes(dataset, label_column: str, class_ids) -> object:
    """The rows whose label is one of `class_ids` (reads the label column alone; no image is decoded)."""
    labels = np.asarray(dataset.with_format("arrow")[label_column])
    return dataset.select(np.flatnonzero(np.isin(labels, np.asarray(class_ids))))


def _normalised(name: str) -> str:
    return " ".join(name.replace("_", " ").split()).lower()


@SUITES.register("imagenet")
class ImageNet(ImageSuite):
    """ImageNet-1k and subsets (Imagenette, Imagewoof, ImageNet-100): top-1, top-5 with >10 classes."""

    paper = "Russakovsky et al., ImageNet Large Scale Visual Recognition Challenge, IJCV 2015"
    default_model = "vit-base"  # google/vit-base-patch16-224
    model_aliases = {
        # Image classifiers pretrained on ImageNet-1k (ViT-B/16 after ImageNet-21k).
        "vit-base": ModelAlias(
            "google/vit-base-patch16-224", note="ViT-B/16, 86M parameters (Dosovitskiy et al. 2021)"
        ),
        "deit-tiny": ModelAlias("facebook/deit-tiny-patch16-224", note="ViT-Ti/16 trained by DeiT, 5.7M parameters"),
        "deit-small": ModelAlias("facebook/deit-small-patch16-224", note="ViT-S/16 trained by DeiT, 22M parameters"),
        "resnet-50": ModelAlias("microsoft/resnet-50", note="ResNet-50 (He et al. 2016), 25.6M parameters"),
        "resnet-18": ModelAlias("microsoft/resnet-18", note="ResNet-18, 11.7M parameters"),
        # Random-init architectures (harness.data.image_classifiers.RANDOM_INIT_MODELS), trainable
        # offline; any image suite takes them (cifar too).
        "vit-tiny": ModelAlias(
            "random-init:vit-tiny",
            random_init=True,
            note="NOT pretrained: random-init ViT-Ti/16 (hidden 192, 12 layers, 3 heads)",
        ),
        "vit-tiny-6": ModelAlias(
            "random-init:vit-tiny-6",
            random_init=True,
            note="NOT pretrained: random-init ViT-Ti/16 with 6 layers, for CPU runs",
        ),
        "resnet-tiny": ModelAlias(
            "random-init:resnet-tiny",
            random_init=True,
            note="NOT pretrained: random-init ResNet-10 at half width (1.2M)",
        ),
    }
    tasks = IMAGENET_TASKS
    # Fine-tuning as ViT's reference code fine-tunes (google-research/vision_transformer,
    # vit_jax/configs/common.py, with Dosovitskiy et al. 2021, App. B.1.1): gradient clipping at
    # global norm 1 (the harness's default), 500 warm-up steps of 10k (5%), no weight decay. Its
    # batch is 512; 64 here keeps a CPU step affordable, and 3 epochs is the budget default (raise
    # it with --epochs). The learning rate comes from the method. max_length is unused: the input
    # size is the model's.
    defaults = TrainDefaults(
        epochs=3,
        batch_size=64,
        eval_batch_size=128,
        max_length=DEFAULT_IMAGE_SIZE,
        warmup_ratio=0.05,
        weight_decay=0.0,
        source="google-research/vision_transformer fine-tuning config (Dosovitskiy et al. 2021): clip 1, 5% warm-up, "
        "no weight decay; batch 512 -> 64 and 3 epochs for a CPU budget",
    )

    # Data ------------------------------------------------------------------
    def locate(self, task: ImageNetTask, data_dir, train_data: str | None = None) -> dict[str, DataSource]:
        sources = super().locate(task, data_dir)
        if task.labelled_by != "imagenet" or not task.wnids:
            return sources
        return {
            split: ClassSubsetSource(s.hub_id, s.config, s.split, s.files, task.label_column, task.imagenet_ids)
            for split, s in sources.items()
        }

    def load(self, source: DataSource):
        # The split carries its own name (load_split names Parquet splits as the hub does), so
        # `prepare` can tell the training split, which it augments, from the evaluation split.
        dataset = super().load(source)
        if isinstance(source, ClassSubsetSource):
            dataset = keep_classes(dataset, source.label_column, source.class_ids)
        return dataset

    # Model -----------------------------------------------------------------
    def build_model(self, location: str, task: ImageNetTask, train_dataset):
        # The data's columns are checked by `prepare`, which the job runs on the training split
        # straight after this and before any step (building the model does not read the data).
        return build_image_classifier(location, task.num_labels, task.imagenet_ids)

    def head_modules(self, model) -> tuple[str, ...]:
        return head_modules(model)

    def required_columns(self, task: ImageNetTask) -> tuple[str, ...]:
        return (task.image_column,)

    def label_column(self, task: ImageNetTask) -> tuple[str, int]:
        # ILSVRC/imagenet-1k labels are ImageNet-1k indices (a subset task keeps only its classes
        # when loading); the subset data sets number their own classes 0..n-1.
        return task.label_column, IMAGENET_CLASSES if task.labelled_by == "imagenet" else task.num_labels

    # Examples --------------------------------------------------------------
    def label_map(self, task: ImageNetTask, dataset) -> dict[int, int] | None:
        """The data's label -> the task's label (None when they are the same numbers)."""
        feature = dataset.features.get(task.label_column)
        data_names = list(getattr(feature, "names", None) or [])
        if task.labelled_by == "imagenet":
            if data_names and len(data_names) != IMAGENET_CLASSES:
                raise HarnessError(
                    f"ImageNet {task.name} expects ImageNet-1k labels (1000 classes) but the data has {len(data_names)}"
                )
            ids = task.imagenet_ids
            return None if ids is None else {imagenet_id: i for i, imagenet_id in enumerate(ids)}
        if not data_names:
            return None  # plain integers: taken to be the task's label order
        if len(data_names) != task.num_labels:
            raise HarnessError(
                f"ImageNet {task.name} expects {task.num_labels} classes but the data has {len(data_names)}"
            )
        # A class is recognised by its name or its WordNet id, whatever order the data lists them in.
        ours = {_normalised(n): i for i, n in enumerate(task.names)} | {w: i for i, w in enumerate(task.wnids)}
        mapping = {j: ours.get(_normalised(name)) for j, name in enumerate(data_names)}
        unknown = [data_names[j] for j, i in mapping.items() if i is None]
        if unknown or len(set(mapping.values())) != task.num_labels:
            raise HarnessError(
                f"ImageNet {task.name}: the data's classes {data_names} are not the task's {list(task.names)} "
                f"(unmatched: {unknown})"
            )
        return None if all(j == i for j, i in mapping.items()) else mapping

    def prepare(self, dataset, spec: ImageSpec, task: ImageNetTask, max_length: int) -> Prepared:
        check_image_columns(dataset, task.image_column, task.label_column, f"ImageNet {task.name}")
        transform = ResizeCenterCrop.standard(spec.size)
        if str(getattr(dataset, "split", "")) == task.train_split:
            transform = RandomHorizontalFlip(transform)
        images = DecodedImages(dataset, task.image_column, task.label_column, transform, self.label_map(task, dataset))
        return Prepared(images, NormalizeCollate(spec.mean, spec.std), images.references())
