"""Soft prompts through peft: trained virtual tokens instead of trained weights.

- Prompt tuning (Lester et al., EMNLP 2021): virtual token embeddings prepended to the input.
- Prefix tuning (Li and Liang, ACL 2021): trained key/value prefixes at every layer.
"""

from __future__ import annotations

from pydantic import Field

from harness.method import METHODS, MethodParams
from harness.peft_method import PeftMethod


class PromptParams(MethodParams):
    num_virtual_tokens: int = Field(20, gt=0, description="trained virtual tokens (prompt tuning paper: 20-100)")


@METHODS.register("prompt-tuning")
class PromptTuning(PeftMethod):
    """Prompt tuning: trained virtual-token embeddings prepended to the input (peft)."""

    name = "prompt-tuning"
    category = "soft prompt"
    paper = "Lester et al., The Power of Scale for Parameter-Efficient Prompt Tuning, EMNLP 2021"
    Params = PromptParams
    default_lr = 3e-2  # the paper uses 0.3 with Adafactor; 3e-2 is the AdamW equivalent in peft's examples

    def peft_config(self, ctx, model):
        from peft import PromptTuningConfig

        return PromptTuningConfig(num_virtual_tokens=self.params.num_virtual_tokens, **self.common_kwargs(ctx))


class PrefixParams(PromptParams):
    projection: bool = Field(False, description="reparameterise the prefix through an MLP, as the paper does")


@METHODS.register("prefix-tuning")
class PrefixTuning(PeftMethod):
    """Prefix tuning: trained key/value prefixes at every attention layer (peft)."""

    name = "prefix-tuning"
    category = "soft prompt"
    paper = "Li and Liang, Prefix-Tuning: Optimizing Continuous Prompts for Generation, ACL 2021"
    Params = PrefixParams
    default_lr = 1e-2  # peft's sequence-classification example rate for prefixes without projection

    def peft_config(self, ctx, model):
        from peft import PrefixTuningConfig

        p = self.params
        return PrefixTuningConfig(num_virtual_tokens=p.num_virtual_tokens, prefix_projection=p.projection, **self.common_kwargs(ctx))

