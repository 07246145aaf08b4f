"""Pipelines: steps in order, compression before or after training, merging, and costs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from harness.errors import HarnessError
from harness.meters import forward_flops
from harness.method import Method, MethodContext, Pipeline
from methods.quantization import fake_quantize


def _spy(name: str, log: list[str], compresses: bool) -> Method:
    class Spy(Method):
        def apply(self, model, ctx):
            log.append(f"{name}.apply")
            return model

        def finalize(self, model):
            log.append(f"{name}.finalize")
            return model

        def merge(self, model):
            log.append(f"{name}.merge")
            return model

    Spy.name, Spy.compresses = name, compresses
    return Spy()


def test_steps_run_in_order_with_compression_before_and_after_training():
    log: list[str] = []
    pipeline = Pipeline([_spy("prune", log, True), _spy("adapt", log, False), _spy("quantize", log, True)])
    model = nn.Linear(4, 4)
    pipeline.apply(model, MethodContext(task_type="image_cls"))
    assert log == ["prune.apply", "adapt.apply"]
    pipeline.finalize(model)
    assert log == ["prune.apply", "adapt.apply", "prune.finalize", "adapt.finalize",
                   "adapt.merge", "prune.merge", "quantize.apply", "quantize.finalize"]
    assert [(c.step, c.phase) for c in pipeline.costs] == [
        ("prune", "before training"), ("adapt", "before training"), ("merge", "after training"), ("quantize", "after training")]


def test_compression_alone_runs_before_the_empty_training():
    log: list[str] = []
    pipeline = Pipeline([_spy("prune", log, True), _spy("quantize", log, True)])
    pipeline.apply(nn.Linear(4, 4), MethodContext(task_type="image_cls"))
    assert log == ["prune.apply", "quantize.apply"]
    assert pipeline.after == []


def test_compression_between_adaptation_steps_is_refused():
    with pytest.raises(HarnessError, match="sits between adaptation steps") as info:
        Pipeline.parse("full+magnitude+bitfit")
    assert "\n" not in str(info.value)


def test_an_adapter_that_cannot_merge_cannot_be_compressed_after_training():
    with pytest.raises(HarnessError, match="cannot be merged"):
        Pipeline.parse("prompt-tuning+int8")
    Pipeline.parse("int8+prompt-tuning")  # compress first, then adapt: fine


def test_the_learning_rate_default_is_the_adaptation_steps():
    assert Pipeline.parse("lora+wanda").default_lr == Pipeline.parse("lora").default_lr
    assert Pipeline.parse("wanda+lora").default_lr == Pipeline.parse("lora").default_lr


def test_lora_then_int8_merges_the_trained_adapter_then_quantizes(model):
    """`lora+int8` equals: LoRA, merged into the weights by peft, then each layer quantized."""
    import copy

    from harness.compress import compressible_layers

    ctx = MethodContext(task_type="seq_cls", head_modules=("classifier",))
    pipeline = Pipeline.parse("lora:r=4+int8:group_size=32")
    wrapped = pipeline.apply(model, ctx)
    torch.manual_seed(0)
    with torch.no_grad():  # stand-in for training: a non-zero update
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    reference = copy.deepcopy(wrapped).merge_and_unload()
    with torch.no_grad():
        for _, layer in compressible_layers(reference, ("classifier",)):
            layer.weight.copy_(fake_quantize(layer.weight, 8, 32))

    final = pipeline.finalize(wrapped)
    assert not any("lora" in n for n, _ in final.named_parameters())
    expected = dict(compressible_layers(reference, ("classifier",)))
    for name, layer in compressible_layers(final, ("classifier",)):
        assert torch.equal(layer.weight, expected[name].weight), name
    ids = torch.randint(5, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(final(input_ids=ids).logits, reference(input_ids=ids).logits)
    assert [c.step for c in pipeline.costs] == ["lora:r=4", "merge", "int8:group_size=32"]


def test_a_hand_written_adapter_merges_to_the_same_outputs(model):
    ctx = MethodContext(task_type="seq_cls", head_modules=("classifier",))
    pipeline = Pipeline.parse("sora:r=4+int8")
    wrapped = pipeline.apply(model, ctx)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = torch.randint(5, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        expected = wrapped(input_ids=ids).logits
        merged = pipeline.before[0].merge(wrapped)
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-5)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_forward_flops_count_the_matmuls_that_run():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return self.net(x)

    flops = forward_flops(Wrap(), {"x": torch.randn(4, 64)}, torch.device("cpu"), "fp32")
    assert flops == 2 * 4 * (64 * 32 + 32 * 8)


def test_a_cli_run_records_each_step_and_the_pipeline_total(tiny_model, tiny_glue, results_dir):
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.store import read_results
    from tests.conftest import tiny_run_args

    result = CliRunner().invoke(app, tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora:r=2+int8"))
    assert result.exit_code == 0, result.output
    row = read_results(results_dir).iloc[0]
    costs = json.loads(row["pipeline_costs"])
    assert [(c["step"], c["phase"]) for c in costs] == [
        ("lora:r=2", "before training"), ("train", "training"), ("merge", "after training"), ("int8", "after training")]
    assert row["pipeline_seconds"] == pytest.approx(sum(c["seconds"] for c in costs))
    assert row["compress_seconds"] == pytest.approx(costs[2]["seconds"] + costs[3]["seconds"])
    assert row["weight_bits"] > 8 and row["compression_kernel"] == "simulated"
    assert row["bits_per_parameter"] == pytest.approx(8 * row["compressed_model_bytes"] / costs[-1]["total_params"])
    assert row["flops_per_sample"] > 0


def test_a_step_after_training_is_checked_before_training(tiny_model, tiny_glue, results_dir):
    """`lora+tome` on a text model: refused before any training, one line, exit 2, nothing written."""
    import subprocess
    import sys

    from tests.conftest import tiny_run_args

    args = tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora:r=2+tome")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "token merging needs a vision transformer" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not results_dir.exists() or not any(results_dir.rglob("*.parquet"))
