"""Soft prompts through peft: trained virtual tokens instead of trained weights.

- Prompt tuning (Lester et al., EMNLP 2021): virtual token embeddings prepended to the input.
- Prefix tuning (Li and Liang, ACL 2021): trained key/value prefixes at every layer.

peft hands a prefix to the model as `past_key_values`. transformers 5 renamed that argument
`cache` (the old name is deprecated): peft's sequence-classification forward then finds no
argument of that name and refuses, so prefixes are passed as `cache` here. Generation reads only
`cache`, so on a causal LM peft's soft prompt never reaches what is generated and the score would
be the base model's: refused up front. A model whose attention takes no cache at all cannot hold
a prefix: refused too.
"""

from __future__ import annotations

import inspect
import types

import torch
from pydantic import Field

from harness.core.errors import HarnessError
from harness.methods.base import METHODS, MethodContext, MethodParams
from harness.methods.peft_family import PeftMethod


def cache_argument(model: torch.nn.Module) -> str | None:
    """The keyword the model's backbone takes cached keys and values by: `past_key_values`
    (transformers 4), `cache` (transformers 5), or None when it takes none."""
    backbone = getattr(model, "base_model", model)
    names = inspect.signature(backbone.forward).parameters
    return next((name for name in ("past_key_values", "cache") if name in names), None)


def refuse_soft_prompt_generation(method: str, model: torch.nn.Module, ctx: MethodContext) -> None:
    if ctx.task_type == "causal_lm" and cache_argument(model) != "past_key_values":
        import transformers

        raise HarnessError(
            f"method {method!r} on a causal LM: generation with transformers {transformers.__version__} would not see "
            f"the soft prompt (peft passes it as past_key_values, which generation there no longer reads), so the score "
            f"would be the base model's; use another method on this suite"
        )


def _prefix_forward_through_cache(
    self,
    input_ids=None,
    attention_mask=None,
    inputs_embeds=None,
    labels=None,
    output_attentions=None,
    output_hidden_states=None,
    return_dict=None,
    **kwargs,
):
    """peft's prefix-tuning forward (its attention mask already extended over the prefix), with
    the prefix passed as `cache`: each attention layer prepends it to its keys and values."""
    rows = (input_ids if input_ids is not None else inputs_embeds).shape[0]
    given = {
        "output_attentions": output_attentions,
        "output_hidden_states": output_hidden_states,
        "return_dict": return_dict,
    }
    return self.base_model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        inputs_embeds=inputs_embeds,
        labels=labels,
        cache=self.get_prompt(rows),
        **{k: v for k, v in given.items() if v is not None},
        **kwargs,
    )


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

    def apply(self, model, ctx):
        refuse_soft_prompt_generation(self.name, model, ctx)
        return super().apply(model, ctx)

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

    def apply(self, model, ctx):
        refuse_soft_prompt_generation(self.name, model, ctx)
        argument = cache_argument(model)
        if argument is None:
            raise HarnessError(
                f"method {self.name!r}: {type(model).__name__} takes no cached keys and values, where a prefix is held; "
                f"use prompt-tuning or another method"
            )
        wrapped = super().apply(model, ctx)
        if argument == "cache" and hasattr(wrapped, "_prefix_tuning_forward"):
            wrapped._prefix_tuning_forward = types.MethodType(_prefix_forward_through_cache, wrapped)
        return wrapped

    def peft_config(self, ctx, model):
        from peft import PrefixTuningConfig

        p = self.params
        return PrefixTuningConfig(
            num_virtual_tokens=p.num_virtual_tokens, prefix_projection=p.projection, **self.common_kwargs(ctx)
        )
