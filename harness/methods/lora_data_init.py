"""LoRA initialised from the task's data, through peft.

- EVA (Paischer et al., 2024): A from the SVD of the layers' input activations on a few
  batches; ranks redistributed by explained variance.
- CorDA (Yang et al., NeurIPS 2024): adapters built from a context-oriented SVD of the
  weights times the input covariance on calibration batches.
- LoRA-GA (Wang et al., NeurIPS 2024): A and B from the SVD of the full weight gradient
  estimated on a few batches, so the first step matches full fine-tuning's direction.

The batches come from the job's training split (`ctx.batches`), never from evaluation data.
"""

from __future__ import annotations

import torch
from pydantic import Field

from harness.measure.timing import device_of
from harness.methods.base import METHODS
from harness.methods.lora import LoraFamily, LoraParams


class DataInitParams(LoraParams):
    n_batches: int = Field(8, gt=0, description="training batches used to initialise")


class _DataInitialised(LoraFamily):
    Params = DataInitParams
    category = "low-rank, data-driven init"


@METHODS.register("eva")
class EVA(_DataInitialised):
    """EVA: LoRA's A initialised from the SVD of input activations, ranks by explained variance (peft)."""

    paper = "Paischer et al., One Initialization to Rule them All: Fine-tuning via Explained Variance Adaptation, arXiv 2024"

    def extra_config(self, ctx, model):
        from peft import EvaConfig

        # Sequence-level labels are not token masks: use every attended token.
        return {"init_lora_weights": "eva", "eva_config": EvaConfig(use_label_mask=False)}

    def initialise(self, model, ctx):
        from peft import initialize_lora_eva_weights

        batches = list(ctx.batches(self.params.n_batches, device_of(model)))
        initialize_lora_eva_weights(model, dataloader=batches, show_progress_bar=False)


@METHODS.register("corda")
class CorDA(_DataInitialised):
    """CorDA: adapters from a covariance-oriented SVD of the weights on calibration batches (peft)."""

    paper = "Yang et al., CorDA: Context-Oriented Decomposition Adaptation of Large Language Models, NeurIPS 2024"

    def extra_config(self, ctx, model):
        from peft.tuners.lora.config import CordaConfig

        return {"init_lora_weights": "corda", "corda_config": CordaConfig(corda_method="ipm")}

    def prepare(self, model, config, ctx):
        from peft.tuners.lora.corda import preprocess_corda

        batches = list(ctx.batches(self.params.n_batches, device_of(model)))

        @torch.no_grad()
        def run_model():
            # peft's covariance hook takes one sequence per forward (it squeezes the batch
            # dimension), as the paper's calibration does: feed examples one by one, unpadded.
            for batch in batches:
                for i in range(len(batch["input_ids"])):
                    keep = batch["attention_mask"][i].bool() if "attention_mask" in batch else slice(None)
                    single = {
                        k: v[i : i + 1, keep] if v.dim() == 2 else v[i : i + 1]
                        for k, v in batch.items()
                        if k != "labels"
                    }
                    model(**single)

        preprocess_corda(model, config, run_model=run_model)


@METHODS.register("lora-ga")
class LoraGA(_DataInitialised):
    """LoRA-GA: A and B from the SVD of the estimated full-weight gradient (peft)."""

    paper = "Wang et al., LoRA-GA: Low-Rank Adaptation with Gradient Approximation, NeurIPS 2024"

    def extra_config(self, ctx, model):
        from peft import LoraGAConfig

        return {"init_lora_weights": "lora_ga", "lora_ga_config": LoraGAConfig()}

    def prepare(self, model, config, ctx):
        from peft import preprocess_loraga

        batches = list(ctx.batches(self.params.n_batches, device_of(model)))

        def train_step():
            for batch in batches:
                with torch.enable_grad():
                    model(**batch).loss.backward()

        preprocess_loraga(model, config, train_step=train_step)
        model.zero_grad(set_to_none=True)
