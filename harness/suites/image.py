"""Image-classification data shared by the image suites (cifar, imagenet).

Images stay encoded in the Arrow table and are decoded one row at a time when the loader
asks for it (`DecodedImages`), so a split never sits decoded in memory. A row becomes a
(3, H, W) uint8 tensor after a PIL transform (a fixed resize, or resize-then-center-crop,
with a random horizontal flip for training); the collate (`NormalizeCollate`) turns a batch
of them into normalised float pixels in one vectorised step. `ImageTask` and `ImageSuite` are
the task and suite bases both image suites share (columns, logits as predictions, top-k metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from harness.core.errors import HarnessError
from harness.evaluation.metrics import top_k_accuracy
from harness.suites.base import Suite, Task

# The standard ImageNet evaluation crop: resize the shorter side to 256, center-crop 224
# (He et al. 2016, sec. 3.4 testing; torchvision's and timm's default crop fraction 0.875).
CROP_FRACTION = 224 / 256

Transform = Callable[["PIL.Image.Image"], "PIL.Image.Image"]  # noqa: F821 - PIL is imported lazily


@dataclass(frozen=True)
class FixedSize:
    """Resize to size x size unless the image already is (CIFAR's 32x32 images pass untouched)."""

    size: int

    def __call__(self, image):
        return image if image.size == (self.size, self.size) else image.resize((self.size, self.size))


@dataclass(frozen=True)
class ResizeCenterCrop:
    """Resize the shorter side to `resize` (bilinear), then cut the central crop x crop square."""

    crop: int
    resize: int

    @classmethod
    def standard(cls, crop: int) -> "ResizeCenterCrop":
        """The ImageNet protocol at any input size: 224 -> resize 256, crop 224."""
        return cls(crop, round(crop / CROP_FRACTION))

    def __call__(self, image):
        from PIL import Image

        width, height = image.size
        scale = self.resize / min(width, height)
        size = (max(self.crop, round(width * scale)), max(self.crop, round(height * scale)))
        if size != image.size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        left, top = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        return image.crop((left, top, left + self.crop, top + self.crop))


@dataclass(frozen=True)
class RandomHorizontalFlip:
    """Another transform, then a left-right mirror with probability 1/2 (torch's global RNG, which
    the job seeds, so a run's flips are reproducible)."""

    then: Transform

    def __call__(self, image):
        from PIL import ImageOps

        image = self.then(image)
        return ImageOps.mirror(image) if torch.rand(()) < 0.5 else image


class DecodedImages(torch.utils.data.Dataset):
    """Rows of a `datasets.Dataset` decoded on access to {pixel_values: (3, H, W) uint8, labels: int}.

    `label_map` renumbers the data's labels into the task's (None: keep them); `references()`
    reads the label column alone, without decoding a single image.
    """

    def __init__(
        self,
        dataset,
        image_column: str,
        label_column: str,
        transform: Transform,
        label_map: Mapping[int, int] | None = None,
    ):
        self.dataset, self.image_column, self.label_column = dataset, image_column, label_column
        self.transform, self.label_map = transform, label_map

    def __len__(self) -> int:
        return len(self.dataset)

    def _label(self, value) -> int:
        return int(value) if self.label_map is None else self.label_map[int(value)]

    def __getitem__(self, i: int) -> dict:
        row = self.dataset[int(i)]
        image = self.transform(row[self.image_column].convert("RGB"))
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        return {"pixel_values": pixels, "labels": self._label(row[self.label_column])}

    def references(self) -> list[int]:
        return [self._label(y) for y in self.dataset[self.label_column]]


class NormalizeCollate:
    """Stack uint8 images and normalise them: (pixels / 255 - mean) / std, per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        pixels = torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]).float()
        batch = {"pixel_values": (pixels - self.mean) / self.std}
        if "labels" in examples[0]:
            batch["labels"] = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
        return batch


def check_image_columns(dataset, image_column: str, label_column: str, what: str) -> None:
    """Both columns present, or one line naming what the data has instead."""
    missing = [c for c in (image_column, label_column) if c not in dataset.column_names]
    if missing:
        raise HarnessError(f"{what} data lacks column(s) {missing}; has {dataset.column_names}")


# Tasks and suites --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTask(Task):
    """An image-classification task: which columns hold the image and the label.

    A subclass provides `num_labels` (a field, or a property computed from its class list)."""

    image_column: str = "image"
    label_column: str = "label"

    @property
    def metrics(self) -> tuple[str, ...]:
        return metric_names(self.num_labels)


class ImageSuite(Suite):
    """What the image suites share: logits as predictions, top-1 (and top-5) from them."""

    task_type = "image_cls"

    def predictions(self, outputs, task: ImageTask) -> list:
        return logit_rows(outputs)

    def compute_metrics(self, task: ImageTask, predictions, references) -> dict[str, float]:
        return top_k_metrics(predictions, references, task.metrics)

    def predicted_values(self, task: ImageTask, predictions) -> list[float]:
        """The predicted class of each example: the argmax of its logits, as top-1 accuracy takes it."""
        scores = np.asarray(predictions, dtype=np.float32).reshape(len(predictions), -1)
        return [float(c) for c in scores.argmax(-1)]


# Predictions and metrics ------------------------------------------------------------------


def metric_names(num_labels: int) -> tuple[str, ...]:
    """Top-1 accuracy; top-5 beside it when there are more than 10 classes (as ImageNet and CIFAR-100 report)."""
    return ("accuracy", "top5_accuracy") if num_labels > 10 else ("accuracy",)


def logit_rows(outputs) -> list[np.ndarray]:
    """Each example's logits (float32), so that top-1 and any top-k come from the same predictions."""
    return list(outputs.logits.detach().float().cpu().numpy())


def top_k_metrics(predictions, references, names: Sequence[str]) -> dict[str, float]:
    """The named metrics (accuracy, top5_accuracy) over per-example logits, by scikit-learn."""
    scores = np.asarray(predictions, dtype=np.float32).reshape(len(predictions), -1)
    result = {"accuracy": top_k_accuracy(scores, references, 1)}
    if "top5_accuracy" in names:
        result["top5_accuracy"] = top_k_accuracy(scores, references, 5)
    return result
