"""IA3 (Liu et al., NeurIPS 2022, "T-Few") through peft: learned vectors that rescale
keys, values and the feed-forward activations."""

from __future__ import annotations

from pydantic import Field, model_validator

from harness.methods.base import METHODS
from harness.methods.peft_family import MergeableParams, PeftMethod, peft_args


class IA3Params(MergeableParams):
    # target_modules default: peft's per-architecture list (key, value, output.dense for BERT)
    feedforward_modules: list[str] | None = Field(None, description="subset of target_modules whose input is scaled")

    @model_validator(mode="after")
    def _check(self):
        if self.feedforward_modules and self.target_modules is None:
            raise ValueError("feedforward_modules needs target_modules")
        return self


@METHODS.register("ia3")
class IA3(PeftMethod):
    """IA3: learned rescaling vectors on keys, values and feed-forward activations (peft)."""

    category = "scaling"
    paper = "Liu et al., Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning, NeurIPS 2022"
    Params = IA3Params
    default_lr = 3e-3
    default_lr_source = "Liu et al. 2022 (T-Few), Adafactor at learning rate 3e-3 for (IA)3"
    config_class = "IA3Config"
    config_fields = peft_args("feedforward_modules")
