"""Image classifiers from transformers (ViT, DeiT, ResNet, ...): loading, random-init aliases,
and the class-subset wrapper.

- A hub id or local directory loads with `AutoModelForImageClassification`. A head whose size
  is the task's is used as is; an ImageNet-1k head (1000 classes) on a task whose classes are a
  subset of ImageNet-1k is kept and restricted to them (`ClassSubsetLogits`); any other head is
  replaced by a fresh one of the task's size.
- A random-init alias (`RANDOM_INIT_MODELS`, listed in `harness.data.resolve.MODEL_ALIASES` with
  `random_init=True`) builds the architecture from its config with no pretrained weights, so a
  ViT or ResNet can be trained offline; the job seeds torch before building, so the
  initialisation is reproducible. Its identity in the result row is `random-init:<alias>`.
- `image_spec` says what the model expects: its input size and the normalisation of its image
  processor (ImageNet's statistics when it has none, with a warning on the `harness` logger).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.errors import HarnessError

# The ImageNet channel statistics (torchvision's, and transformers' IMAGENET_DEFAULT_MEAN/STD):
# what a model without an image processor of its own is normalised with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

log = logging.getLogger("harness")

RANDOM_INIT_PREFIX = "random-init:"
IMAGENET_CLASSES = 1000
DEFAULT_IMAGE_SIZE = 224  # models without a fixed input size (CNNs) get the standard ImageNet crop


@dataclass(frozen=True)
class RandomInitModel:
    family: str  # "vit" or "resnet": the transformers config and model class
    config: dict[str, Any]


# ViT-Ti/16 is DeiT-Ti's shape (Touvron et al., Training data-efficient image transformers,
# ICML 2021, Table 1: hidden 192, 12 layers, 3 heads, MLP 768; LayerNorm eps 1e-6 as DeiT).
_VIT_TINY = dict(
    image_size=224, patch_size=16, hidden_size=192, num_attention_heads=3, intermediate_size=768, layer_norm_eps=1e-6
)
RANDOM_INIT_MODELS: dict[str, RandomInitModel] = {
    "vit-tiny": RandomInitModel("vit", {**_VIT_TINY, "num_hidden_layers": 12}),  # 5.5M parameters (10 classes)
    "vit-tiny-6": RandomInitModel("vit", {**_VIT_TINY, "num_hidden_layers": 6}),  # 2.9M: half the depth, for CPU runs
    # ResNet-10 (one basic block per stage, He et al. 2016) at half ResNet-18's widths: 1.2M parameters.
    "resnet-tiny": RandomInitModel(
        "resnet", dict(embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic")
    ),
}


@dataclass(frozen=True)
class ImageSpec:
    """What a model takes: square images of `size` pixels, normalised with `mean` and `std`."""

    size: int
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


class ClassSubsetLogits(nn.Module):
    """An ImageNet-1k classifier restricted to a subset of its classes: the logits of those classes
    only (in the task's label order), and the cross-entropy over them.

    Why a wrapper: the pretrained 1000-way head already knows the subset's classes, so replacing
    it would throw that knowledge away (a fresh head starts at chance); selecting its columns
    keeps the checkpoint's accuracy on the subset from the first step, and training (any method,
    with no new head) adapts that same head through the restricted cross-entropy. Wrapping,
    rather than slicing the head's weights, leaves the model's module tree and parameter names
    as they are, so method targets (LoRA's query/value, the `classifier` head) still match, and
    the full model stays intact inside. `config` is the wrapped model's, for code that reads the
    architecture from it (e.g. peft's default targets).
    """

    def __init__(self, model: nn.Module, class_ids: Sequence[int]):
        super().__init__()
        n = int(getattr(model.config, "num_labels", 0))
        bad = [i for i in class_ids if not 0 <= i < n]
        if bad or len(set(class_ids)) != len(class_ids):
            raise HarnessError(f"class subset {list(class_ids)[:5]}... must be distinct ids of the model's {n} classes")
        self.model = model
        self.config = model.config
        self.register_buffer("class_ids", torch.tensor(list(class_ids), dtype=torch.long), persistent=False)

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, **kwargs):
        from transformers.modeling_outputs import ImageClassifierOutput

        outputs = self.model(pixel_values=pixel_values, **kwargs)
        logits = outputs.logits.index_select(-1, self.class_ids)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )


def _input_size(config) -> int:
    size = getattr(config, "image_size", None)
    if isinstance(size, (list, tuple)):
        size = size[0]
    return int(size) if size else DEFAULT_IMAGE_SIZE


def image_spec(location: str, config) -> ImageSpec:
    """The model's input size and its image processor's mean/std (ImageNet's when it has none,
    with a warning: a checkpoint trained with other statistics would be fed mis-normalised images)."""
    size = _input_size(config)
    if location.startswith(RANDOM_INIT_PREFIX):
        return ImageSpec(size)  # built here and trained from scratch: ImageNet's statistics by design
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        processor, _ = ImageProcessingMixin.get_image_processor_dict(location)
    except (OSError, ValueError):  # no preprocessor_config.json (a model saved without one)
        return _imagenet_statistics(location, size, "no preprocessor_config.json")
    mean, std = processor.get("image_mean"), processor.get("image_std")
    if not (isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3):
        return _imagenet_statistics(
            location, size, "its preprocessor_config.json has no 3-channel image_mean/image_std"
        )
    return ImageSpec(size, tuple(float(m) for m in mean), tuple(float(s) for s in std))


def _imagenet_statistics(location: str, size: int, why: str) -> ImageSpec:
    spec = ImageSpec(size)
    log.warning(
        "harness: warning: model %r has no usable image processor config (%s); normalising its inputs with "
        "ImageNet's mean %s and std %s",
        location,
        why,
        spec.mean,
        spec.std,
    )
    return spec


def build_random_init(location: str, num_labels: int) -> nn.Module:
    """A random-init alias's architecture with a head of the task's size (torch must be seeded)."""
    name = location.removeprefix(RANDOM_INIT_PREFIX)
    spec = RANDOM_INIT_MODELS.get(name)
    if spec is None:
        raise HarnessError(f"unknown random-init model {name!r}; known: {', '.join(RANDOM_INIT_MODELS)}")
    if spec.family == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        return ViTForImageClassification(ViTConfig(**spec.config, num_labels=num_labels))
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig(**spec.config, num_labels=num_labels))


def build_image_classifier(
    location: str, num_labels: int, imagenet_ids: Sequence[int] | None = None
) -> tuple[nn.Module, ImageSpec]:
    """The classifier for a task of `num_labels` classes, and what it takes as input.

    `imagenet_ids` are the task's classes as ImageNet-1k indices, in label order, when the task is
    a subset of ImageNet-1k: a checkpoint with a 1000-class head is then restricted to them.
    """
    if location.startswith(RANDOM_INIT_PREFIX):
        model = build_random_init(location, num_labels)
        return model, image_spec(location, model.config)
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(location)
    pretrained_classes = int(getattr(config, "num_labels", 0))
    if pretrained_classes == num_labels:
        model = AutoModelForImageClassification.from_pretrained(location)
    elif pretrained_classes == IMAGENET_CLASSES and imagenet_ids is not None:
        model = ClassSubsetLogits(AutoModelForImageClassification.from_pretrained(location), imagenet_ids)
    else:  # another label set: a fresh head of the task's size, as any new head
        model = AutoModelForImageClassification.from_pretrained(
            location, num_labels=num_labels, ignore_mismatched_sizes=True
        )
    return model, image_spec(location, config)


def head_modules(model: nn.Module) -> tuple[str, ...]:
    """transformers' image classifiers name their head `classifier` (also inside ClassSubsetLogits)."""
    return ("classifier",) if any(n.split(".")[-1] == "classifier" for n, _ in model.named_modules()) else ()
