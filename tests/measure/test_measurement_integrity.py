"""Measuring never changes the model, and the measured columns mean what their names say:
FLOP counts and kernel profiles leave every parameter and buffer as they were; gradient
bytes are the gradients held; attention counts the same under every kernel; training
FLOPs are summed over the batches that ran; data-driven initialisation has its own time."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from harness.core.errors import HarnessError
from harness.methods.base import MethodContext
from harness.methods.pipeline import Pipeline
from harness.suites.base import Prepared
from tests.support import run_cifar

CPU = torch.device("cpu")


class ConvBN(torch.nn.Module):
    """A convolution, batch normalisation and a linear head: a model whose train-mode forward
    updates buffers (running mean and variance, batches tracked)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, pixel_values, labels=None):
        h = torch.relu(self.bn(self.conv(pixel_values))).mean(dim=(2, 3))
        logits = self.head(h)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SimpleNamespace(loss=loss, logits=logits)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"measuring changed {changed}"


@pytest.fixture()
def conv_bn():
    torch.manual_seed(0)
    model = ConvBN().train()
    batch = {"pixel_values": torch.randn(8, 3, 6, 6) * 3 + 1, "labels": torch.arange(8) % 3}
    return model, batch


def test_flop_counts_leave_the_whole_state_dict_bit_identical(conv_bn):
    from harness.measure.flops import forward_flops, train_step_flops

    model, batch = conv_bn
    before = _snapshot(model)
    train_step_flops(model, batch, CPU, "fp32")
    _assert_same(model, before)
    forward_flops(model, {"pixel_values": batch["pixel_values"]}, CPU, "fp32")
    _assert_same(model, before)
    assert model.training and model.bn.training  # the modes are restored too


def test_kernel_profiles_leave_the_whole_state_dict_bit_identical(conv_bn):
    from harness.engine.profiling import profile_inference, profile_training

    model, batch = conv_bn
    model.bn.eval()  # a mode the method chose for one module survives the profile
    model.bn.train()
    before = _snapshot(model)
    profile_training(model, batch, CPU, "fp32", [])
    _assert_same(model, before)
    profile_inference(model, batch, CPU, "fp32", [])
    _assert_same(model, before)
    assert all(p.grad is None for p in model.parameters())


def test_a_measurement_that_moves_a_parameter_is_an_error(conv_bn):
    from harness.measure.passes import untraced_backward

    model, _ = conv_bn
    with pytest.raises(RuntimeError, match="head.weight"):
        with untraced_backward(model, CPU):
            with torch.no_grad():
                model.head.weight.add_(1.0)


def test_kernel_profiling_does_not_change_the_score(tiny_ckpt, cifar_mirror, tmp_path, monkeypatch):  # noqa: F811
    from harness.results.store import read_results
    from harness.suites.base import SUITES

    cifar = type(SUITES.get("cifar")())
    evaluate = cifar.evaluate
    evaluated = []

    def recording_evaluate(self, model, *args, **kwargs):  # the model exactly as it is evaluated
        evaluated.append(_snapshot(model))
        return evaluate(self, model, *args, **kwargs)

    monkeypatch.setattr(cifar, "evaluate", recording_evaluate)
    rows = {}
    for flag in ("--kernel-profile", "--no-kernel-profile"):
        assert (
            run_cifar(
                tiny_ckpt,
                cifar_mirror,
                tmp_path / flag,
                "--method",
                "full",
                "--max-steps",
                "2",
                "--batch-size",
                "16",
                flag,
            )
            == 0
        )
        rows[flag] = read_results(tmp_path / flag).iloc[0]
    on, off = rows["--kernel-profile"], rows["--no-kernel-profile"]
    assert on["status"] == off["status"] == "ok"
    profiled, plain = evaluated
    _assert_same_state(profiled, plain)
    assert on["final_train_loss"] == off["final_train_loss"]
    assert on["metrics"] == off["metrics"] and on["score"] == off["score"]
    assert on["train_flops"] == off["train_flops"]


def _assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert not changed, f"evaluated models differ in {changed}"


# Gradient bytes ----------------------------------------------------------------------------


def _nbytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def _train(model, data, method: str, steps: int = 2, precision: str = "fp32"):
    from harness.engine.loop import train

    ctx = MethodContext(task_type="seq_cls", head_modules=("classifier",), total_steps=steps, lr=1e-3, seed=0)
    pipeline = Pipeline.parse(method)
    model = pipeline.apply(model, ctx)
    stats = train(
        model,
        data,
        pipeline,
        ctx,
        batch_size=8,
        steps=steps,
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        precision=precision,
        device=CPU,
        seed=0,
        show_progress=False,
    )
    return pipeline, stats


def test_lisa_gradient_bytes_are_the_gradients_held(tiny_model, train_data):
    from transformers import AutoModelForSequenceClassification

    def fresh():
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)

    model = fresh()
    pipeline, lisa = _train(model, train_data, "lisa:n_layers=1")
    layers = model.bert.encoder.layer
    in_layers = {id(p) for p in layers.parameters()}
    always = [p for p in model.parameters() if id(p) not in in_layers]  # embeddings, pooler, head
    (active,) = pipeline.methods[0].active  # one period: the same layer trained both steps
    assert lisa.memory.gradient_bytes == _nbytes(always) + _nbytes(layers[active].parameters())

    full_model = fresh()
    _, full = _train(full_model, train_data, "full")
    assert full.memory.gradient_bytes == _nbytes(full_model.parameters())
    assert lisa.memory.gradient_bytes < full.memory.gradient_bytes


# Attention FLOPs -----------------------------------------------------------------------------


def _bert(tiny_model, impl: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2, attn_implementation=impl)


@pytest.mark.parametrize("dropout", [0.1, 0.0])  # with dropout CPU SDPA takes the math path; without, the fused kernel
def test_sdpa_and_eager_attention_count_the_same_flops(tiny_model, dropout):
    from harness.measure.flops import forward_flops, train_step_flops

    ids = torch.randint(5, 20, (4, 12))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    counts = {}
    for impl in ("sdpa", "eager"):
        model = _bert(tiny_model, impl)
        model.config.attention_probs_dropout_prob = dropout
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = dropout
        counts[impl] = (
            forward_flops(model, inputs, CPU, "fp32"),
            train_step_flops(model.train(), {**inputs, "labels": torch.tensor([0, 1, 0, 1])}, CPU, "fp32"),
        )
    assert counts["sdpa"] == counts["eager"]
    # The forward by hand (tests/conftest.py TINY: hidden 32, 2 heads of 16, intermediate 48, 2 layers):
    # per layer Q, K, V, O and the two MLP matmuls, the scores Q K^T and the weighted sum P V;
    # then the pooler and the 2-way classifier on the first token.
    b, s, hidden, heads, inter, layers = 4, 12, 32, 2, 48, 2
    per_layer = (
        4 * 2 * b * s * hidden * hidden
        + 2 * 2 * b * s * hidden * inter
        + 2 * (2 * b * heads * s * s * (hidden // heads))
    )
    assert counts["eager"][0] == layers * per_layer + 2 * b * hidden * hidden + 2 * b * hidden * 2


def test_fused_attention_backward_counts_only_the_gradients_autograd_needs():
    from harness.measure.flops import flop_counter

    torch.manual_seed(0)
    b, h, s, d = 2, 2, 5, 8
    w = torch.nn.Parameter(torch.randn(d, d))
    x = torch.randn(b, h, s, d)
    for needs in ((True, True, True), (True, False, True), (False, False, True)):
        with flop_counter() as fused:
            q, k, v = ((x @ w) if n else x.clone() for n in needs)
            torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
        with flop_counter() as eager:
            q, k, v = ((x @ w) if n else x.clone() for n in needs)
            scores = (q @ k.transpose(-1, -2)) / d**0.5
            (scores.softmax(-1) @ v).sum().backward()
        assert fused.get_total_flops() == eager.get_total_flops()
        attention = sum(needs[:2]) and 2 * b * h * s * s * d  # one more matmul for the scores' gradient
        projections = 2 * sum(needs) * (2 * b * h * s * d * d)  # x @ w forward and its weight's gradient
        grads = sum(needs) * (2 * b * h * s * s * d)  # dQ, dK, dV: one matmul each
        assert fused.get_total_flops() == 2 * (2 * b * h * s * s * d) + attention + grads + projections


# Training FLOPs over the steps that ran ------------------------------------------------------


class TokenRegressor(torch.nn.Module):
    """One linear map over every (padded) position: FLOPs known by hand per batch shape."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 4, bias=False)

    def forward(self, x, labels):
        return SimpleNamespace(loss=((self.linear(x) - labels) ** 2).mean())


def test_train_flops_are_summed_over_the_batches_that_ran():
    from harness.engine.loop import train

    torch.manual_seed(0)
    lengths = [1, 3, 5, 7, 2, 9, 4, 6, 8, 10, 3]
    examples = [{"x": torch.randn(n, 8), "labels": torch.randn(n, 4)} for n in lengths]
    shapes = []

    def collate(items):  # dynamic padding to the longest in the batch, logging each batch's shape
        width = max(len(e["x"]) for e in items)
        pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, width - len(t)))  # noqa: E731
        batch = {key: torch.stack([pad(e[key]) for e in items]) for key in ("x", "labels")}
        shapes.append(tuple(batch["x"].shape[:2]))
        return batch

    data = Prepared(examples, collate, [0] * len(examples))
    model = TokenRegressor()
    pipeline = Pipeline.parse("full")
    ctx = MethodContext(task_type="seq_cls", total_steps=5, lr=1e-3, seed=0)
    pipeline.apply(model, ctx)
    shapes.clear()
    stats = train(
        model,
        data,
        pipeline,
        ctx,
        batch_size=3,
        steps=5,
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        precision="fp32",
        device=CPU,
        seed=0,
        show_progress=False,
        grad_accum=2,
    )
    ran = list(shapes)
    assert len(ran) == 5 * 2 and len(set(ran)) > 2  # the batches really differ in length
    # Forward x W^T and the weight's gradient, 2 * b * L * 8 * 4 each (the input needs no gradient).
    expected = sum(2 * (2 * b * n * 8 * 4) for b, n in ran)
    assert stats.flops == expected
    assert stats.flops_per_step == pytest.approx(expected / 5)


# Initialisation time -------------------------------------------------------------------------


def test_data_driven_initialisation_has_its_own_time(tiny_model, tiny_glue, results_dir, monkeypatch):
    from harness.cli import main
    from harness.methods.full import FullFineTuning
    from harness.results.store import read_results
    from tests.support import tiny_run_args

    original = FullFineTuning.apply

    def slow_apply(self, model, ctx):
        time.sleep(0.3)  # stands in for an SVD or a calibration pass
        return original(self, model, ctx)

    monkeypatch.setattr(FullFineTuning, "apply", slow_apply)
    assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", "full", "--no-kernel-profile")) == 0
    row = read_results(results_dir).iloc[0]
    assert row["init_seconds"] >= 0.3
    assert row["pipeline_seconds"] == pytest.approx(
        row["init_seconds"] + row["train_seconds"]
    )  # nothing after training


# fp16 on CPU ---------------------------------------------------------------------------------


def test_fp16_on_cpu_is_refused_before_loading(tiny_model, tiny_glue, tmp_path, capsys, monkeypatch):
    from harness.cli import main
    from harness.suites.base import SUITES

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(type(SUITES.get("glue")()), "build_model", no_load)
    code = main(
        [
            "run",
            "--suite",
            "glue",
            "--task",
            "sst2",
            "--model",
            str(tiny_model),
            "--data-dir",
            str(tiny_glue),
            "--results",
            str(tmp_path / "r"),
            "--method",
            "full",
            "--precision",
            "fp16",
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "fp16" in err and "bf16" in err
    assert not list((tmp_path / "r").rglob("*.parquet"))


def test_fp16_training_on_cpu_is_refused_by_the_loop(train_data, model):
    with pytest.raises(HarnessError, match="fp16"):
        _train(model, train_data, "full", precision="fp16")
