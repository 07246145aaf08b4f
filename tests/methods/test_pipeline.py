"""Pipelines: steps in order, compression before or after training, merging, and costs."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from harness.core.errors import HarnessError
from harness.measure.flops import forward_flops
from harness.methods.base import Method, MethodContext
from harness.methods.pipeline import Pipeline
from harness.methods.quantization import fake_quantize


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
    assert log == [
        "prune.apply",
        "adapt.apply",
        "prune.finalize",
        "adapt.finalize",
        "adapt.merge",
        "prune.merge",
        "quantize.apply",
        "quantize.finalize",
    ]
    assert [(c.step, c.phase) for c in pipeline.costs] == [
        ("prune", "before training"),
        ("adapt", "before training"),
        ("merge", "after training"),
        ("quantize", "after training"),
    ]


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

    from harness.methods.compress import compressible_layers

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
    from harness.results.store import read_results
    from tests.support import tiny_run_args

    result = CliRunner().invoke(app, tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora:r=2+int8"))
    assert result.exit_code == 0, result.output
    row = read_results(results_dir).iloc[0]
    costs = json.loads(row["pipeline_costs"])
    assert [(c["step"], c["phase"]) for c in costs] == [
        ("lora:r=2", "before training"),
        ("train", "training"),
        ("merge", "after training"),
        ("int8", "after training"),
    ]
    assert row["pipeline_seconds"] == pytest.approx(sum(c["seconds"] for c in costs))
    assert row["compress_seconds"] == pytest.approx(costs[2]["seconds"] + costs[3]["seconds"])
    assert row["weight_bits"] > 8 and row["compression_kernel"] == "simulated"
    assert row["bits_per_parameter"] == pytest.approx(8 * row["compressed_model_bytes"] / costs[-1]["total_params"])
    assert row["flops_per_sample"] > 0


def test_a_step_after_training_is_checked_before_training(tiny_model, tiny_glue, results_dir):
    """`lora+tome` on a text model: refused before any training, one line, exit 2, nothing written."""
    import subprocess
    import sys

    from tests.support import tiny_run_args

    args = tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "lora:r=2+tome")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "token merging needs a vision transformer" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not results_dir.exists() or not any(results_dir.rglob("*.parquet"))


# Pipelines accepted only when they can work ------------------------------------------------


@pytest.mark.parametrize(
    "spec, fix",
    [
        ("int4+full", "full+int4"),
        ("gptq+lisa", "lisa+gptq"),
        ("int8+galore", "galore+int8"),
        ("nf4+full", "full+nf4"),
        ("wanda+int4+full", "full+int4"),
    ],
)
def test_training_the_quantized_weights_is_refused_naming_the_order_that_works(spec, fix):
    with pytest.raises(HarnessError, match="moving them off its grid") as info:
        Pipeline.parse(spec)
    assert fix in str(info.value) and "\n" not in str(info.value)
    Pipeline.parse(fix)  # train, then quantize: accepted


def test_a_merged_adapter_on_gptq_weights_is_refused_and_unmerged_is_fine():
    with pytest.raises(HarnessError, match="cannot quantize them again"):
        Pipeline.parse("gptq+lora:merge=true")
    Pipeline.parse("gptq+lora")
    Pipeline.parse("lora+gptq")


@pytest.mark.parametrize("spec", ["int8-dynamic+lora", "int8-dynamic+int4", "lora+int8-dynamic+wanda"])
def test_int8_dynamic_must_come_last(spec):
    with pytest.raises(HarnessError, match="'int8-dynamic' must be the last step") as info:
        Pipeline.parse(spec)
    assert "+int8-dynamic)" in str(info.value)
    Pipeline.parse("lora+int8-dynamic")


@pytest.mark.parametrize("spec", ["lora+lora", "lora:r=4+wanda+lora:r=8"])
def test_the_same_method_twice_is_refused(spec):
    with pytest.raises(HarnessError, match="'lora' is given 2 times"):
        Pipeline.parse(spec)


@pytest.mark.parametrize("method", ["lora", "nola", "dylora", "sora"])  # peft's and the hand-written adapters
def test_an_empty_target_list_is_refused(model, method):
    ctx = MethodContext(task_type="seq_cls", head_modules=("classifier",))
    with pytest.raises(HarnessError, match=r"target_modules=\[\] names no module.*linear layers: .*query"):
        Pipeline.parse(f"{method}:target_modules=[]").apply(model, ctx)


def _on_int4_grid(layer, group_size: int) -> bool:
    from harness.methods.quantization import on_grid

    return on_grid(layer.weight.detach(), 4, group_size)


@pytest.mark.parametrize("spec, group_size", [("int4:group_size=16", 16), ("nf4", None)])
def test_a_merged_adapter_on_quantized_weights_is_quantized_again(model, spec, group_size):
    """`int4+lora:merge=true` (and nf4's simulated path): the merged update moves the weights off
    the grid; the pipeline quantizes them again, so the row's format is the final weights'."""
    from harness.methods.compress import compressible_layers
    from harness.methods.nf4 import BLOCK_SIZE, nf4_code
    from harness.methods.quantization import on_grid

    ctx = MethodContext(task_type="seq_cls", head_modules=("classifier",))
    pipeline = Pipeline.parse(f"{spec}+lora:r=4,merge=true")
    wrapped = pipeline.apply(model, ctx)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_()  # as if trained
    merged = pipeline.finalize(wrapped)
    layers = compressible_layers(merged, ("classifier",))

    def holds_format(layer):
        w = layer.weight.detach()
        if group_size is None:
            return on_grid(w.reshape(1, -1), 4, BLOCK_SIZE, code=nf4_code())
        return on_grid(w, 4, group_size) and torch.allclose(w, fake_quantize(w, 4, group_size), atol=1e-6)

    assert all(holds_format(layer) for _, layer in layers)
    assert pipeline.costs[-1].step == f"{spec} (again)" and pipeline.costs[-1].phase == "after training"
    info = pipeline.compression(merged)
    # int4 at group 16: 4 bits plus a 16-bit scale and a 4-bit zero point per 16; NF4: its storage formula
    if group_size:
        expected = 4 + (16 + 4) / 16
    else:
        from harness.methods.nf4 import nf4_bits

        numels = [layer.weight.numel() for _, layer in layers]
        expected = sum(nf4_bits(n) for n in numels) / sum(numels)
    assert info.kernel == "simulated" and info.weight_bits == pytest.approx(expected)


def test_gradient_checkpointing_under_token_merging_is_refused_before_any_step():
    log: list[str] = []
    ctx = MethodContext(task_type="image_cls", gradient_checkpointing=True)
    pipeline = Pipeline.parse("tome+lora")
    pipeline.methods[0].apply = lambda model, ctx: log.append("tome.apply") or model
    with pytest.raises(HarnessError, match="'tome' cannot train under --gradient-checkpointing"):
        pipeline.apply(nn.Linear(4, 4), ctx)
    assert log == []
    # after training nothing is recomputed: merging may follow a checkpointed training
    Pipeline.parse("lora+tome").check_context(ctx)


def test_a_compression_only_run_on_a_fresh_head_is_refused():
    fresh = MethodContext(task_type="seq_cls", head_modules=("classifier",), fresh_head=True)
    with pytest.raises(HarnessError, match=r"only compresses, and the task head \(classifier\) is freshly initialised"):
        Pipeline.parse("int8").check_context(fresh)
    Pipeline.parse("int8+linear-probe").check_context(fresh)
    loaded = MethodContext(task_type="seq_cls", head_modules=("classifier",), fresh_head=False)
    Pipeline.parse("int8").check_context(loaded)


def test_a_fresh_head_is_told_from_a_loaded_one(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, BertModel

    from harness.methods.base import head_is_fresh

    loaded = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    assert not head_is_fresh(loaded, ("classifier",))
    resized = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3, ignore_mismatched_sizes=True)
    assert head_is_fresh(resized, ("classifier",))
    BertModel.from_pretrained(tiny_model).save_pretrained(tmp_path / "headless")
    headless = AutoModelForSequenceClassification.from_pretrained(tmp_path / "headless", num_labels=2)
    assert head_is_fresh(headless, ("classifier",))
    assert not head_is_fresh(nn.Linear(3, 2), ("classifier",))  # no loading marks: no evidence


def test_quantized_weights_are_not_made_trainable(monkeypatch):
    pytest.importorskip("bitsandbytes")
    import logging
    from collections import OrderedDict

    from harness.methods.full import FullFineTuning

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    monkeypatch.setattr("harness.methods.nf4.runs_bitsandbytes_kernel", lambda layer: isinstance(layer, nn.Linear))
    ctx = MethodContext(task_type="image_cls", head_modules=("head",))
    model = Pipeline.parse("nf4").apply(nn.Sequential(OrderedDict(fc=nn.Linear(64, 32), head=nn.Linear(32, 4))), ctx)
    with pytest.raises(HarnessError, match=r"method 'full': 1 weights are quantized \(fc.weight is torch.uint8\)"):
        Pipeline([FullFineTuning()]).apply(model, ctx)


@pytest.mark.parametrize(
    "spec, extra, task, message",
    [
        ("int8-dynamic+lora", (), "sst2", "'int8-dynamic' must be the last step"),
        ("int4+full", (), "sst2", "moving them off its grid"),
        ("tome+lora", ("--gradient-checkpointing",), "sst2", "cannot train under --gradient-checkpointing"),
        # the tiny checkpoint's head has 2 labels: MNLI's 3 get a fresh one
        ("int8", (), "mnli", "freshly initialised"),
        ("lora:target_modules=[]", (), "sst2", "names no module"),
    ],
)
def test_unworkable_runs_are_refused_before_any_training(
    tiny_model, tiny_glue, results_dir, capsys, monkeypatch, spec, extra, task, message
):
    import time

    from harness.cli import main
    from tests.support import tiny_run_args

    trained: list[int] = []
    monkeypatch.setattr(
        "harness.engine.job.train", lambda *a, **k: trained.append(1) or (_ for _ in ()).throw(RuntimeError("trained"))
    )
    args = tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", spec, *extra)
    args[args.index("sst2")] = task
    start = time.perf_counter()
    assert main(args) == 2
    assert time.perf_counter() - start < 10
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert trained == []
    assert not results_dir.exists() or not any(results_dir.rglob("*.parquet"))


def test_a_cifar_head_replaced_for_another_class_count_is_fresh(tmp_path):
    """A CIFAR-10 checkpoint read for 100 classes gets a new linear head: compressing alone
    would score chance, so the check must see that head as fresh, and the loaded one as not."""
    import torch

    from harness.data.vision_models import load_resnet20, resnet20
    from harness.methods.base import head_is_fresh

    torch.save({"net": resnet20(num_classes=10).state_dict()}, tmp_path / "ckpt.pth")
    assert not head_is_fresh(load_resnet20(tmp_path / "ckpt.pth", 10), ("linear",))
    assert head_is_fresh(load_resnet20(tmp_path / "ckpt.pth", 100), ("linear",))


def test_a_pipeline_that_trains_nothing_on_a_fresh_head_is_refused():
    fresh = MethodContext(task_type="seq_cls", head_modules=("classifier",), fresh_head=True)
    with pytest.raises(HarnessError, match=r"'none' trains nothing, and the task head \(classifier\) is freshly"):
        Pipeline.parse("none").check_context(fresh)
    Pipeline.parse("none").check_context(MethodContext(task_type="causal_lm"))  # nothing fresh: the reference point
