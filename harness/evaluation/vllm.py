"""vLLM as the engine behind lm-eval's generation tasks: lm-eval's own `VLLM` model, on CUDA.

vLLM loads a checkpoint folder, not a module in memory, so the model after the method is written
to a temporary folder with `save_pretrained`, its tokenizer beside it. A peft LoRA adapter that
vLLM can serve stays unmerged: the base is written without it, the adapter beside it, and lm-eval
hands vLLM the adapter as a LoRA request (`lora_local_path`). Any other peft model is merged into
a copy first. Prompts, few-shot examples, stop sequences and answer extraction are lm-eval's task
config, as on the transformers path, so both score the same weights.
"""

from __future__ import annotations

import copy
import gc
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.evaluation.base import EVAL_BACKENDS, GenerateBackend
from harness.evaluation.latency import lm_costs
from harness.evaluation.lm_eval import LmEvalResult, score

# The adapter ranks vLLM's engine accepts for `max_lora_rank` (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM takes gpu_memory_utilization of the whole GPU for weights and KV cache (vllm EngineArgs
# default 0.9); the trained model still holds memory in this process, so vLLM gets that share of
# what is free instead.
MEMORY_SHARE = 0.9
# vLLM's dtype "auto" runs float32 checkpoints in float16 (vllm ModelConfig); the dtype is given
# so that vLLM computes with the weights the method left, as the transformers path does.
DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_version() -> str:
    from importlib.metadata import version

    return version("vllm")


def lm_class():
    """lm-eval's vLLM model (importing it imports vllm)."""
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM


@dataclass
class Checkpoint:
    folder: Path  # weights (the base, when an adapter is separate), config and tokenizer
    dtype: str
    adapter: Path | None = None  # an unmerged peft LoRA adapter, served as a LoRA request
    rank: int | None = None


def servable_lora(model) -> bool:
    """A peft model vLLM serves unmerged: one plain LoRA adapter on linear layers (no DoRA, no
    per-module ranks, no fully trained modules beside it)."""
    from peft import PeftType
    from peft.tuners.lora import Linear, LoraLayer

    configs = getattr(model, "peft_config", {})
    if len(configs) != 1:
        return False
    (config,) = configs.values()
    if config.peft_type != PeftType.LORA:
        return False
    if config.use_dora or config.modules_to_save or config.rank_pattern or config.alpha_pattern:
        return False
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    return bool(layers) and all(isinstance(m, Linear) for m in layers) and config.r <= VLLM_LORA_RANKS[-1]


def write_checkpoint(model: torch.nn.Module, tokenizer, folder: Path) -> Checkpoint:
    """The model after the method as a checkpoint vLLM loads; `model` itself is left as it is."""
    from peft import PeftModel

    floating = [p.dtype for p in model.parameters() if p.is_floating_point()]
    dtype = DTYPES[floating[0]] if floating else "auto"
    target = folder / "model"
    adapter = rank = None
    if isinstance(model, PeftModel) and servable_lora(model):
        (config,) = model.peft_config.values()
        adapter, rank = folder / "adapter", config.r
        model.save_pretrained(adapter)  # the adapter alone
        copy.deepcopy(model).unload().save_pretrained(target)  # the base without the adapter layers
    elif isinstance(model, PeftModel):
        copy.deepcopy(model).merge_and_unload().save_pretrained(target)
    else:
        model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return Checkpoint(target, dtype, adapter, rank)


def model_args(checkpoint: Checkpoint, batch_size: int, max_new_tokens: int) -> dict[str, Any]:
    """What lm-eval's VLLM is built with."""
    args: dict[str, Any] = {
        "pretrained": str(checkpoint.folder),
        "dtype": checkpoint.dtype,
        "batch_size": batch_size,
        "max_gen_toks": max_new_tokens,
    }
    if checkpoint.adapter is not None:
        args["lora_local_path"] = str(checkpoint.adapter)
        args["max_lora_rank"] = min(r for r in VLLM_LORA_RANKS if r >= checkpoint.rank)
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        args["gpu_memory_utilization"] = MEMORY_SHARE * free / total
    return args


@EVAL_BACKENDS.register("vllm")
class Vllm(GenerateBackend):
    """lm-eval's vLLM model on a checkpoint of the model after the method (LoRA unmerged); CUDA only."""

    preference = 10  # ahead of the transformers path wherever it can run

    @classmethod
    def unavailable(cls, device_type: str) -> str | None:
        if not installed():
            return "vllm is not installed (pip install 'harness[vllm]')"
        if device_type != "cuda":
            return f"vLLM runs on CUDA GPUs and this run's device is {device_type}"
        return None

    def evaluate(
        self,
        model,
        tokenizer,
        tasks,
        *,
        num_fewshot,
        limit,
        batch_size,
        max_new_tokens,
        max_length=None,
        show_progress=True,
    ) -> LmEvalResult:
        with tempfile.TemporaryDirectory(prefix="harness-vllm-") as folder:
            checkpoint = write_checkpoint(model, tokenizer, Path(folder))
            args = model_args(checkpoint, batch_size, max_new_tokens)
            if max_length is not None:  # lm-eval's VLLM takes it as the engine's max_model_len
                args["max_length"] = max_length
            lm = lm_class()(**args)
            try:
                settings = {
                    "engine": "vllm",
                    "vllm_version": vllm_version(),
                    "batch_size": batch_size,
                    "dtype": checkpoint.dtype,
                    "lora_request": checkpoint.adapter is not None,
                    "max_length": max_length,
                }
                return score(lm, tasks, num_fewshot, limit, max_new_tokens, settings, show_progress)
            finally:  # the engine's GPU memory back before the costs are measured
                del lm
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()

    def costs(self, model, tokenizer, data, run, device) -> dict[str, Any]:
        # Timings of the model in memory with transformers, as on the transformers path.
        return lm_costs(model, tokenizer, data, run, device)
