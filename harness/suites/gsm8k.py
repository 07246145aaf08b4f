"""GSM8K: grade-school math word problems, for causal language models.

The lm-eval suite with its one task, gsm8k (harness/suites/lm_tasks.py), as it was before that
suite existed: the same options, hashes and results. Training: GSM8K's train split in lm-eval's
gsm8k prompt `Question: ...\nAnswer:` with the loss on the answer only (or another set of
question/answer pairs by hub id, e.g. MetaMathQA). Evaluation: lm-eval's own `gsm8k` task on the
test split; exact match after its strict (`#### N`) and flexible (last number) answer extraction.
"""

from __future__ import annotations

from harness.suites.base import SUITES, Preset
from harness.suites.lm_tasks import LmEval, LmTask

GSM8K = LmTask(
    name="gsm8k",
    dataset="openai/gsm8k",
    config="main",
    train_split="train",
    eval_splits=(("test", ""),),
    # The peft method comparison scores a fine-tuned model's free-form answer by its number, which
    # lm-eval's flexible extraction (the last number) is closest to.
    primary_metric="exact_match_flexible",
    summary="grade-school math, exact match of the final number",
    lm_eval_task="gsm8k",
)


@SUITES.register("gsm8k")
class Gsm8k(LmEval):
    """GSM8K math word problems for causal LMs, scored by lm-evaluation-harness."""

    paper = "Cobbe et al., Training Verifiers to Solve Math Word Problems, 2021"
    tasks = {"gsm8k": GSM8K}
    preferred_metric = {"gsm8k": GSM8K.primary_metric}
    presets = {
        # huggingface/peft method_comparison/MetaMathQA: default_training_params.json (Llama-3.2-3B,
        # max_seq_length 768, batch 4, 5000 steps, AdamW lr 1e-4, weight decay 0.1, clip 1.0, cosine
        # with 10% warm-up in utils.py) and experiments/lora/llama-3.2-3B-rank32 (r 32, alpha 64).
        # Differences: peft loads the weights in bf16, here bf16 is autocast over float32 weights;
        # peft takes the loss on prompt and answer, here on the answer only; peft scores with its own
        # answer parser, here lm-eval's gsm8k (flexible extraction is the closest).
        "peft-metamathqa": Preset(
            "peft-metamathqa",
            "huggingface/peft method_comparison/MetaMathQA (LoRA r=32 on Llama-3.2-3B)",
            {
                "model": "llama-3.2-3b",
                "method": "lora:r=32,alpha=64",
                "train_data": "meta-math/MetaMathQA",
                "max_steps": 5000,
                "batch_size": 4,
                "eval_batch_size": 51,
                "lr": 1e-4,
                "weight_decay": 0.1,
                "max_length": 768,
                "lr_scheduler": "cosine",
                "warmup_ratio": 0.1,
                "max_grad_norm": 1.0,
                "precision": "bf16",
            },
        ),
    }
