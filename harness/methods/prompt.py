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
from harness.measure.kernels import AdapterScope
from harness.methods.base import METHODS, MethodContext, MethodParams
from harness.methods.peft_family import PeftMethod, peft_args


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


class SoftPrompt(PeftMethod):
    """Base of the soft-prompt methods: what they add is peft's `prompt_encoder`."""

    category = "soft prompt"
    Params = PromptParams

    def adapter_scopes(self, model):
        """The prompt encoders: tiny. What these methods cost is the longer sequence every layer
        then processes, which belongs to no operator of theirs (compare step times instead)."""
        return [
            AdapterScope(module)
            for name, module in model.named_modules()
            if name.split(".")[-1] == "prompt_encoder" and isinstance(module, torch.nn.ModuleDict)
        ]


@METHODS.register("prompt-tuning")
class PromptTuning(SoftPrompt):
    """Prompt tuning: trained virtual-token embeddings prepended to the input (peft)."""

    paper = "Lester et al., The Power of Scale for Parameter-Efficient Prompt Tuning, EMNLP 2021"
    # The paper trains with Adafactor at 0.3; peft's AdamW example uses 3e-2.
    default_lr = 3e-2
    default_lr_source = "peft examples/causal_language_modeling/peft_prompt_tuning_clm.ipynb: lr = 3e-2 (AdamW)"
    config_class = "PromptTuningConfig"
    config_fields = peft_args("num_virtual_tokens")

    def apply(self, model, ctx):
        refuse_soft_prompt_generation(self.name, model, ctx)
        return super().apply(model, ctx)


class PrefixParams(PromptParams):
    projection: bool = Field(False, description="reparameterise the prefix through an MLP, as the paper does")


@METHODS.register("prefix-tuning")
class PrefixTuning(SoftPrompt):
    """Prefix tuning: trained key/value prefixes at every attention layer (peft)."""

    paper = "Li and Liang, Prefix-Tuning: Optimizing Continuous Prompts for Generation, ACL 2021"
    Params = PrefixParams
    default_lr = 1e-2
    default_lr_source = (
        "peft examples/sequence_classification/prefix_tuning.ipynb: lr = 1e-2 (prefixes without projection)"
    )
    config_class = "PrefixTuningConfig"
    config_fields = peft_args("num_virtual_tokens", prefix_projection="projection")

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
