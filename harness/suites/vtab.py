"""VTAB-1k (Zhai et al. 2019, "A Large-scale Study of Representation Learning with the Visual Task
Adaptation Benchmark", arXiv:1910.04867): 19 image-classification tasks, 1000 training examples each.

Tasks (`harness list tasks`), in the paper's three groups: natural - caltech101, cifar100, dtd,
oxford_flowers102, oxford_iiit_pet, svhn, sun397; specialized - patch_camelyon, eurosat, resisc45,
diabetic_retinopathy; structured - clevr_count, clevr_dist, dmlab, kitti_dist, dsprites_loc,
dsprites_ori, smallnorb_azi, smallnorb_ele. Class counts and the structured tasks' label
definitions are google-research/task_adaptation's (task_adaptation/data/*.py; the 19 task
arguments of scripts/run_all_tasks.sh).

The 1000 examples and their 800/200 split are task_adaptation's, not a slice of the train split:
`train800` is "train[:800]", `val200` the first 200 of the task's validation portion (e.g.
"validation[:200]" for dtd, "train[{90%}:{90%}+200]" for cifar, "test[:200]" for smallnorb), and
`train800val200` is "train[:800]+validation[:200]": the 800 then the 200, in that order (the
tfds_splits of each data class). VTAB-1k selects hyperparameters by training on the 800 and scoring
the 200, and reports the test split.

Data: no hub copy publishes VTAB-1k as Parquet with these splits, so the suite reads a local mirror
(--data-dir or HARNESS_DATA_DIR) laid out as the other suites':

    <root>/vtab-1k/<task>/train800val200-*.parquet   1000 rows: train800, then val200
    <root>/vtab-1k/<task>/test-*.parquet             the task's full test split

(`<split>/*.parquet` or `<split>.parquet` also do), with columns `image` (Image) and `label` (class
number 0..classes-1). NOAH's data/vtab-source/get_vtab1k.py (ZhangYuanhan-AI/NOAH), the export
VPT-style PEFT work trains on, writes exactly these lists (train800val200.txt, test.txt) from
task_adaptation; one Parquet file per list, rows in the list's order, is the mirror.

The suite enforces the split: a job trains on rows 0..799 of train800val200 (train800), never sees
rows 800..999 (val200, the selection split: `VtabTask.selection_split`, read with
`Vtab.load_selection` by a tuning step) and reports accuracy on the test split. The published final
runs (VTAB's, NOAH's) then retrain on all 1000 (`FINAL_ROWS`); that is a tuning step's to do.

Preprocessing: resize straight to the model's input size (224x224 for ViT-B/16), no crop and no
augmentation (task_adaptation data_loader.preprocess_fn resizes to 224; NOAH trains with
--direct_resize --no_aug, torchvision bicubic, which is PIL's default resize here), then the
model's image-processor mean and std. Metric: top-1 accuracy (top-5 beside it with >10 classes).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.errors import HarnessError
from harness.data.image_classifiers import DEFAULT_IMAGE_SIZE, ImageSpec, build_image_classifier, head_modules
from harness.data.models import ModelAlias
from harness.data.resolve import DataSource, locate_split
from harness.suites.base import SUITES, Prepared, Preset, TrainDefaults, row_count
from harness.suites.image import (
    DecodedImages,
    FixedSize,
    ImageSuite,
    ImageTask,
    NormalizeCollate,
    check_image_columns,
)

MIRROR_ID = "vtab-1k"  # the mirror's dataset folder; no hub id holds VTAB-1k
POOL_SPLIT = "train800val200"  # the 1000 examples, as task_adaptation names them
# The VTAB-1k sizes (Zhai et al. 2019; task_adaptation's num_samples_splits: train800 800, val200 200).
TRAIN_EXAMPLES = 800
SELECTION_EXAMPLES = 200
TRAIN_ROWS = (0, TRAIN_EXAMPLES)  # rows of train800val200 a job trains on
SELECTION_ROWS = (TRAIN_EXAMPLES, TRAIN_EXAMPLES + SELECTION_EXAMPLES)  # held out for selection
FINAL_ROWS = (0, TRAIN_EXAMPLES + SELECTION_EXAMPLES)  # the final fit after selection
DEFAULT_MODEL = "vit-base-in21k"


@dataclass(frozen=True)
class VtabTask(ImageTask):
    """A VTAB-1k task: its classes and group; `train_split` and `selection_split` name the two parts
    of the mirror's train800val200 split (rows TRAIN_ROWS and SELECTION_ROWS)."""

    num_labels: int = 2
    group: str = "natural"
    selection_split: str = "val200"


def _task(name: str, classes: int, group: str, summary: str) -> VtabTask:
    return VtabTask(
        name=name,
        dataset=MIRROR_ID,
        config=name,
        train_split="train800",
        eval_splits=(("test", ""),),
        primary_metric="accuracy",
        summary=f"{group}: {summary}, {classes} classes",
        num_labels=classes,
        group=group,
    )


# Class counts: the num_classes of task_adaptation's data classes (tfds features, or the task's own).
VTAB_TASKS = {
    t.name: t
    for t in [
        _task("caltech101", 102, "natural", "Caltech-101 objects (tfds caltech101)"),
        _task("cifar100", 100, "natural", "CIFAR-100"),
        _task("dtd", 47, "natural", "Describable Textures"),
        _task("oxford_flowers102", 102, "natural", "Oxford Flowers-102"),
        _task("oxford_iiit_pet", 37, "natural", "Oxford-IIIT Pets"),
        _task("svhn", 10, "natural", "SVHN digits (svhn_cropped)"),
        _task("sun397", 397, "natural", "SUN397 scenes"),
        _task("patch_camelyon", 2, "specialized", "PatchCamelyon metastatic tissue"),
        _task("eurosat", 10, "specialized", "EuroSAT RGB land use"),
        _task("resisc45", 45, "specialized", "RESISC45 remote sensing scenes"),
        _task("diabetic_retinopathy", 5, "specialized", "retinopathy grade (btgraham-300)"),
        _task("clevr_count", 8, "structured", "CLEVR object count 3..10 (count_all)"),
        _task("clevr_dist", 6, "structured", "CLEVR closest object distance bin"),
        _task("dmlab", 6, "structured", "DMLab distance/reward class"),
        _task("kitti_dist", 4, "structured", "KITTI closest vehicle distance bin"),
        _task("dsprites_loc", 16, "structured", "dSprites x position in 16 bins"),
        _task("dsprites_ori", 16, "structured", "dSprites orientation in 16 bins"),
        _task("smallnorb_azi", 18, "structured", "smallNORB azimuth"),
        _task("smallnorb_ele", 9, "structured", "smallNORB elevation"),
    ]
}


@dataclass(frozen=True)
class PoolRows(DataSource):
    """Rows start..stop of the train800val200 split: the 800 training or the 200 selection examples."""

    rows: tuple[int, int] = (0, 0)


@SUITES.register("vtab")
class Vtab(ImageSuite):
    """VTAB-1k, 19 tasks: trains on the 800, holds out the 200, reports test-split top-1."""

    paper = (
        "Zhai et al., A Large-scale Study of Representation Learning with the Visual Task Adaptation Benchmark, 2019"
    )
    default_model = DEFAULT_MODEL
    model_aliases = {
        # ViT-B/16 pretrained on ImageNet-21k without an ImageNet-1k fine-tune: the backbone of VTAB-1k
        # PEFT results (VPT, Jia et al. 2022; NOAH, Zhang et al. 2022). It has no classification head.
        DEFAULT_MODEL: ModelAlias(
            "google/vit-base-patch16-224-in21k",
            note="ViT-B/16 pretrained on ImageNet-21k (Dosovitskiy et al. 2021), the VTAB-1k PEFT backbone",
        ),
    }
    tasks = VTAB_TASKS
    # NOAH's VTAB scripts (configs/LoRA/VTAB/slurm_train_lora_vtab.sh, supernet_train_prompt.py
    # defaults): AdamW, batch 64, 100 epochs, cosine with 10 warm-up epochs (10%), weight decay 1e-4.
    # VPT's configs (KMnP/vpt configs/base-prompt.yaml) agree on 100 epochs, cosine, 10 warm-up
    # epochs and weight decay 1e-4. The learning rate comes from the method (or the preset).
    # max_length is unused: the input size is the model's.
    defaults = TrainDefaults(
        epochs=100,
        batch_size=64,
        eval_batch_size=128,
        max_length=DEFAULT_IMAGE_SIZE,
        warmup_ratio=0.1,
        weight_decay=1e-4,
        lr_scheduler="cosine",
        source="NOAH VTAB-1k scripts (Zhang et al. 2022): batch 64, 100 epochs, cosine, 10 warm-up epochs, "
        "weight decay 1e-4 (as VPT's configs)",
    )
    presets = {
        # ZhangYuanhan-AI/NOAH configs/LoRA/VTAB/slurm_train_lora_vtab.sh with
        # experiments/LoRA/ViT-B_prompt_lora_8.yaml: LoRA rank 8 on ViT-B/16 (ImageNet-21k), lr 1e-3,
        # batch 64, 100 epochs, weight decay 1e-4. Differences: NOAH trains on all 1000 examples and
        # uses its own LoRA scaling; here training is on the 800 and alpha is the harness's (2r).
        "noah-lora": Preset(
            "noah-lora",
            "NOAH (Zhang et al. 2022) LoRA VTAB-1k baseline: r 8, lr 1e-3, batch 64, 100 epochs",
            {
                "model": DEFAULT_MODEL,
                "method": "lora:r=8",
                "lr": 1e-3,
                "batch_size": 64,
                "epochs": 100,
                "weight_decay": 1e-4,
                "warmup_ratio": 0.1,
                "lr_scheduler": "cosine",
            },
        ),
    }

    # Data ------------------------------------------------------------------
    @staticmethod
    def _pool(task: VtabTask, data_dir, rows: tuple[int, int]) -> PoolRows:
        if data_dir is None:
            raise HarnessError(
                f"suite 'vtab' reads a local VTAB-1k mirror (there is no hub copy): pass --data-dir with "
                f"<root>/{MIRROR_ID}/{task.config}/{POOL_SPLIT}-*.parquet and test-*.parquet"
            )
        pool = locate_split(MIRROR_ID, task.config, POOL_SPLIT, data_dir)
        n = row_count(pool)
        if n != FINAL_ROWS[1]:
            raise HarnessError(
                f"split {POOL_SPLIT!r} of {MIRROR_ID}/{task.config} holds {n} examples; VTAB-1k's holds "
                f"{FINAL_ROWS[1]}: the {TRAIN_EXAMPLES} of train800, then the {SELECTION_EXAMPLES} of val200"
            )
        return PoolRows(pool.hub_id, pool.config, pool.split, pool.files, rows)

    def locate(self, task: VtabTask, data_dir, train_data: str | None = None) -> dict[str, DataSource]:
        """The 800 training examples and the test split; the 200 are not among them."""
        train = self._pool(task, data_dir, TRAIN_ROWS)
        return {task.train_split: train, "test": locate_split(MIRROR_ID, task.config, "test", data_dir)}

    own_selection = f"val200: rows {SELECTION_ROWS[0]}..{SELECTION_ROWS[1] - 1} of {POOL_SPLIT}, VTAB-1k's own"

    def locate_selection(self, task: VtabTask, data_dir) -> PoolRows:
        """The 200 held-out examples (val200), for hyperparameter selection; no job reports on them."""
        return self._pool(task, data_dir, SELECTION_ROWS)

    def load_selection(self, task: VtabTask, data_dir):
        return self.load(self.locate_selection(task, data_dir))

    def load(self, source: DataSource):
        dataset = super().load(source)
        if isinstance(source, PoolRows):
            dataset = dataset.select(range(*source.rows))
        return dataset

    # Model -----------------------------------------------------------------
    def build_model(self, location: str, task: VtabTask, train_dataset):
        # A fresh head of the task's size (no VTAB task is a subset of ImageNet-1k's classes).
        return build_image_classifier(location, task.num_labels)

    def head_modules(self, model) -> tuple[str, ...]:
        return head_modules(model)

    def required_columns(self, task: VtabTask) -> tuple[str, ...]:
        return (task.image_column,)

    def label_column(self, task: VtabTask) -> tuple[str, int]:
        return task.label_column, task.num_labels

    # Examples --------------------------------------------------------------
    def prepare(self, dataset, spec: ImageSpec, task: VtabTask, max_length: int) -> Prepared:
        check_image_columns(dataset, task.image_column, task.label_column, f"VTAB {task.name}")
        images = DecodedImages(dataset, task.image_column, task.label_column, FixedSize(spec.size))
        return Prepared(images, NormalizeCollate(spec.mean, spec.std), images.references())
