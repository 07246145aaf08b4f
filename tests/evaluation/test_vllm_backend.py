"""The vLLM backend with a stand-in for lm-eval's VLLM model (vllm itself needs CUDA): what it hands
lm-eval (a checkpoint computing what the model in memory computes, merged or as base plus LoRA
request, the generation settings), and that lm-eval's scores of that model are the row's."""

from __future__ import annotations

import ast
import copy
import importlib.util
import inspect
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.evaluation import vllm as vllm_backend

pytest.importorskip("lm_eval")

PROBE = "Question: Tom has 3 apples and gets 4 more. How many apples does Tom have now?\nAnswer:"


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(PROBE, return_tensors="pt")).logits


def _stand_in(seen: dict):
    """A class standing where lm-eval's VLLM does: it loads what it is given as vLLM would (the
    folder, then the LoRA adapter on it), and answers every gsm8k question correctly."""
    from lm_eval.api.model import LM
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    class FakeVLLM(LM):
        def __init__(self, pretrained, lora_local_path=None, **kwargs):
            super().__init__()
            model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32)
            if lora_local_path is not None:
                seen["lora_config"] = json.loads((Path(lora_local_path) / "adapter_config.json").read_text())
                seen["base_keys"] = list(model.state_dict())
                model = PeftModel.from_pretrained(model, lora_local_path)
            seen["logits"] = _logits(model.eval(), AutoTokenizer.from_pretrained(pretrained))
            seen["kwargs"] = {"pretrained": pretrained, "lora_local_path": lora_local_path, **kwargs}

        def generate_until(self, requests, disable_tqdm=False):
            seen["gen_kwargs"] = [r.args[1] for r in requests]
            return [
                f"so {r.doc['answer'].split('#### ')[-1]}.\n#### {r.doc['answer'].split('#### ')[-1]}" for r in requests
            ]

        def loglikelihood(self, requests, disable_tqdm=False):
            raise AssertionError("gsm8k is generative")

        loglikelihood_rolling = loglikelihood

    return FakeVLLM


@pytest.fixture()
def seen(monkeypatch):
    record: dict = {}
    monkeypatch.setattr(vllm_backend, "lm_class", lambda: _stand_in(record))
    monkeypatch.setattr(vllm_backend, "vllm_version", lambda: "0.0-stand-in")
    return record


def _base(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_llama).eval(), AutoTokenizer.from_pretrained(tiny_llama)


def _lora(base, **extra):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False, **extra)
    return get_peft_model(copy.deepcopy(base), config).eval()


def _evaluate(model, tokenizer, lm_tasks):
    backend = vllm_backend.EVAL_BACKENDS.get("vllm")()
    return backend.evaluate(
        model, tokenizer, lm_tasks, num_fewshot=0, limit=3, batch_size=2, max_new_tokens=7, show_progress=False
    )


def test_a_plain_model_is_handed_over_as_a_checkpoint_that_computes_the_same(seen, tiny_llama, lm_tasks):
    model, tokenizer = _base(tiny_llama)
    result = _evaluate(model, tokenizer, lm_tasks)
    assert torch.allclose(seen["logits"], _logits(model, tokenizer), atol=1e-6)
    kwargs = seen["kwargs"]
    assert kwargs["lora_local_path"] is None and "max_lora_rank" not in kwargs
    # float32 weights run as float32 (vLLM's "auto" would run them in float16); lm-eval's batch and length.
    assert kwargs["dtype"] == "float32" and kwargs["batch_size"] == 2 and kwargs["max_gen_toks"] == 7
    assert "gpu_memory_utilization" not in kwargs  # only on CUDA
    # The generation settings lm-eval passes each request: the task's greedy decoding, the run's length.
    assert len(seen["gen_kwargs"]) == 3
    assert all(g["max_gen_toks"] == 7 and g["do_sample"] is False for g in seen["gen_kwargs"])
    # Every stand-in answer is right: lm-eval's score of the handed-over model is the result's.
    assert result.metrics["exact_match_strict"] == 1.0 and result.metrics["exact_match_flexible"] == 1.0
    assert result.settings["engine"] == "vllm" and result.settings["lora_request"] is False
    assert result.settings["max_gen_toks"] == 7 and result.settings["batch_size"] == 2
    assert not Path(kwargs["pretrained"]).exists()  # the temporary checkpoint is gone


def test_an_unmerged_lora_goes_as_base_plus_lora_request(seen, tiny_llama, lm_tasks):
    base, tokenizer = _base(tiny_llama)
    wrapped = _lora(base)
    expected = _logits(wrapped, tokenizer)
    assert not torch.allclose(expected, _logits(base, tokenizer))  # the adapter changes the output
    result = _evaluate(wrapped, tokenizer, lm_tasks)
    assert seen["kwargs"]["lora_local_path"] is not None
    assert seen["kwargs"]["max_lora_rank"] == 8  # the smallest rank vLLM accepts that holds r=4
    assert seen["lora_config"]["r"] == 4 and seen["lora_config"]["lora_alpha"] == 32
    assert not any("lora" in k or "base_layer" in k for k in seen["base_keys"])  # the base alone
    assert torch.allclose(seen["logits"], expected, atol=1e-6)
    assert result.settings["lora_request"] is True
    assert torch.allclose(_logits(wrapped, tokenizer), expected)  # the model in memory is untouched


def test_an_adapter_vllm_cannot_serve_is_merged_into_a_copy(seen, tiny_llama, lm_tasks):
    from peft import PeftModel

    base, tokenizer = _base(tiny_llama)
    dora = _lora(base, use_dora=True)
    expected = _logits(dora, tokenizer)
    _evaluate(dora, tokenizer, lm_tasks)
    assert seen["kwargs"]["lora_local_path"] is None
    assert torch.allclose(seen["logits"], expected, atol=1e-5)
    assert isinstance(dora, PeftModel) and torch.allclose(_logits(dora, tokenizer), expected)


def test_what_the_backend_passes_are_parameters_of_lm_evals_vllm_model():
    """Read from the installed lm-eval's source (importing it needs vllm)."""
    source = importlib.util.find_spec("lm_eval.models.vllm_causallms").origin
    tree = ast.parse(open(source).read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "VLLM")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    parameters = {a.arg for a in init.args.args + init.args.kwonlyargs}
    assert init.args.kwarg is not None  # the rest (gpu_memory_utilization) goes on to vllm.LLM
    checkpoint = vllm_backend.Checkpoint(Path("/m"), "float32", Path("/a"), 16)
    args = vllm_backend.model_args(checkpoint, batch_size=4, max_new_tokens=9)
    assert set(args) <= parameters
    assert args["max_lora_rank"] == 16 and args["lora_local_path"] == "/a"
    assert {"pretrained", "dtype", "batch_size", "max_gen_toks", "lora_local_path", "max_lora_rank"} <= parameters


def test_on_cuda_vllm_gets_its_share_of_the_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (40 * 2**30, 80 * 2**30))
    args = vllm_backend.model_args(vllm_backend.Checkpoint(Path("/m"), "bfloat16"), 4, 9)
    assert args["gpu_memory_utilization"] == pytest.approx(0.9 * 0.5)
    assert "lora_local_path" not in args


def test_unavailable_says_why():
    assert inspect.ismethod(vllm_backend.Vllm.unavailable)
    reason = vllm_backend.Vllm.unavailable("cuda")
    assert (reason is None) == (importlib.util.find_spec("vllm") is not None)
    if reason:
        assert reason.startswith("vllm is not installed")


def test_a_job_asked_for_vllm_scores_through_it_and_records_it(monkeypatch, seen, tiny_llama, tiny_gsm8k, results_dir):
    """The whole job with the stand-in allowed on this CPU: the row's scores and settings are vLLM's,
    its eval_backend says so, and its hash is not the current path's."""
    from harness.engine.job import run_job
    from harness.engine.resolve import resolve
    from harness.spec.run import RunSpec

    monkeypatch.setattr(vllm_backend.Vllm, "unavailable", classmethod(lambda cls, device_type: None))
    values = dict(
        suite="gsm8k",
        method="lora:r=4",
        model=str(tiny_llama),
        data_dir=str(tiny_gsm8k),
        results_dir=str(results_dir),
        device="cpu",
        max_steps=1,
        max_eval_samples=3,
        max_new_tokens=5,
        latency_repeats=1,
    )
    result = run_job(RunSpec(**values, eval_backend="vllm"), show_progress=False)
    row = pd.read_parquet(results_dir).iloc[-1]
    assert result.ok and row["eval_backend"] == "vllm"
    assert row["score"] == 1.0 and json.loads(row["eval_settings"])["engine"] == "vllm"
    assert seen["kwargs"]["lora_local_path"] is not None  # the trained LoRA went unmerged
    # Where vLLM can run it is also the automatic choice; the current path is another experiment.
    assert row["job_hash"] == resolve(RunSpec(**values))[0].job_hash
    assert row["job_hash"] != resolve(RunSpec(**values, eval_backend="lm-eval-hf"))[0].job_hash
