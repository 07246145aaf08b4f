"""SoRA, DyLoRA and NOLA, written by hand on harness.methods.adapters: parameter counts from
formulas, identity at initialisation, learning, each method's own mechanism (SoRA's
proximal gate step and rank removal, DyLoRA's truncation, NOLA's seeded bases), and
bad input."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from harness.core.errors import HarnessError
from harness.engine.loop import train
from harness.measure.size import count_parameters
from harness.methods.dylora import DyLoraLinear
from harness.methods.nola import NolaLinear, random_bases
from harness.methods.pipeline import Pipeline
from harness.methods.sora import SoraLinear
from tests.support import TINY, ctx, loss_before_after

H, L = TINY["hidden_size"], TINY["num_hidden_layers"]
HEAD = H * 2 + 2
QV = L * 2  # adapted layers: query and value of each block, each H x H
INPUTS = {
    "input_ids": torch.tensor([[2, 5, 9, 14, 3], [2, 7, 20, 3, 0]]),
    "attention_mask": torch.tensor([[1] * 5, [1] * 4 + [0]]),
}

EXPECTED_TRAINABLE = {
    "sora:r=4": QV * 4 * (H + H + 1) + HEAD,  # A (r x H), B (H x r) and the gate (r)
    "dylora:r=4": QV * 4 * (H + H) + HEAD,  # A and B, as LoRA
    "nola:r=4,num_basis_a=16,num_basis_b=8": QV * (16 + 8) + HEAD,  # only the coefficients
}


def logits(model):
    with torch.no_grad():
        return model.eval()(**INPUTS).logits


def perturb(model, std=0.1):
    """Move every adapter parameter away from its initialisation (B = 0 hides the update)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "classifier" not in name:
                p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize("spec", list(EXPECTED_TRAINABLE))
def test_trainable_parameters_match_the_formula(spec, model):
    wrapped = Pipeline.parse(spec).apply(model, ctx())
    assert count_parameters(wrapped)[0] == EXPECTED_TRAINABLE[spec]
    adapted = sorted(n.rsplit(".", 1)[-1] for n, m in wrapped.named_modules() if hasattr(m, "delta"))
    assert adapted == ["query"] * L + ["value"] * L  # peft's BERT default


@pytest.mark.parametrize(
    "spec", ["sora", "dylora", "nola", "sora:r=4", "dylora:r=4,eval_rank=2", "nola:r=4,num_basis_a=16,num_basis_b=8"]
)
def test_adapter_leaves_the_model_unchanged_at_initialisation(spec, model):
    before = logits(model)
    after = logits(Pipeline.parse(spec).apply(copy.deepcopy(model), ctx()))
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["sora", "dylora", "nola"])
def test_a_few_steps_lower_the_loss(spec, model, train_data):
    context = ctx(30)
    context.lr = 1e-2
    before, after = loss_before_after(Pipeline.parse(spec), model, context, train_data, steps=30)
    assert after < before * 0.9, (before, after)


# SoRA ----------------------------------------------------------------------


def sora_layers(model):
    return [m for m in model.modules() if isinstance(m, SoraLinear)]


def test_sora_proximal_step_zeroes_small_gate_entries(model):
    """With a zero gradient Adam moves nothing, so the optimizer's step is the soft threshold alone."""
    pipeline = Pipeline.parse("sora:r=4,sparsity_lambda=0.001")
    wrapped = pipeline.apply(model, ctx())
    layer = sora_layers(wrapped)[0]
    optimizer = pipeline.optimizer([p for p in wrapped.parameters() if p.requires_grad], ctx())
    with torch.no_grad():
        layer.gate.copy_(torch.tensor([5e-4, -5e-4, 0.5, -0.5]))
    layer.gate.grad = torch.zeros(4)
    optimizer.step()
    torch.testing.assert_close(layer.gate.detach(), torch.tensor([0.0, 0.0, 0.499, -0.499]))


def test_sora_finalize_removes_zeroed_ranks_and_keeps_outputs(model):
    pipeline = Pipeline.parse("sora:r=4")
    wrapped = pipeline.apply(model, ctx())
    perturb(wrapped)
    first, second = sora_layers(wrapped)[:2]
    with torch.no_grad():
        first.gate[[0, 2]] = 0.0  # two of four ranks pruned
        second.gate.zero_()  # every rank pruned
    before = logits(wrapped)
    trainable = count_parameters(wrapped)[0]
    final = pipeline.finalize(wrapped)
    torch.testing.assert_close(logits(final), before, rtol=1e-4, atol=1e-5)
    assert count_parameters(final)[0] == trainable - (2 + 4) * (H + H + 1)
    assert first.lora_A.shape == (2, H) and first.lora_B.shape == (H, 2) and first.gate.shape == (2,)
    assert len(sora_layers(final)) == QV - 1  # the fully pruned layer is its plain base layer again


def test_sora_strong_sparsity_prunes_every_rank_in_training(model, train_data):
    pipeline = Pipeline.parse("sora:r=4,sparsity_lambda=10")
    context = ctx(3)
    wrapped = pipeline.apply(model, context)
    train(
        wrapped,
        train_data,
        pipeline,
        context,
        batch_size=16,
        steps=3,
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        precision="fp32",
        device=torch.device("cpu"),
        seed=0,
        show_progress=False,
    )
    assert all(not layer.gate.any() for layer in sora_layers(wrapped))
    assert count_parameters(pipeline.finalize(wrapped))[0] == HEAD


# DyLoRA --------------------------------------------------------------------


def test_dylora_eval_rank_uses_the_truncated_update(model):
    wrapped = Pipeline.parse("dylora:r=4,alpha=16,eval_rank=2").apply(model, ctx())
    perturb(wrapped)
    wrapped.eval()
    layer = next(m for m in wrapped.modules() if isinstance(m, DyLoraLinear))
    x = torch.randn(3, 5, H)
    with torch.no_grad():
        expected = layer.base(x) + (16 / 2) * (x @ layer.lora_A[:2].T @ layer.lora_B[:, :2].T)
        torch.testing.assert_close(layer(x), expected)
        full = layer.base(x) + (16 / 4) * (x @ layer.lora_A.T @ layer.lora_B.T)
        assert not torch.allclose(layer(x), full)  # rank 2 is not rank 4


def test_dylora_samples_ranks_from_a_seeded_generator(model):
    def ranks(m):
        pipeline = Pipeline.parse("dylora:r=4")
        wrapped = pipeline.apply(m, ctx())
        layers = [x for x in wrapped.modules() if isinstance(x, DyLoraLinear)]
        seen = []
        for step in range(40):
            assert len({x.train_rank for x in layers}) == 1  # one rank per step, shared by all layers
            seen.append(layers[0].train_rank)
            pipeline.on_step(step, wrapped)
        return seen

    seen = ranks(copy.deepcopy(model))
    assert set(seen) == {1, 2, 3, 4}
    assert ranks(model) == seen


def test_dylora_finalize_truncates_to_eval_rank(model):
    pipeline = Pipeline.parse("dylora:r=4,eval_rank=2")
    wrapped = pipeline.apply(model, ctx())
    perturb(wrapped)
    before = logits(wrapped)
    final = pipeline.finalize(wrapped)
    torch.testing.assert_close(logits(final), before, rtol=1e-5, atol=1e-6)
    assert count_parameters(final)[0] == QV * 2 * (H + H) + HEAD


# NOLA ----------------------------------------------------------------------


def test_nola_bases_are_seeded_buffers_not_parameters(model):
    spec = "nola:r=4,num_basis_a=16,num_basis_b=8"
    again = Pipeline.parse(spec).apply(copy.deepcopy(model), ctx())
    wrapped = Pipeline.parse(spec).apply(model, ctx())
    layers = [m for m in wrapped.modules() if isinstance(m, NolaLinear)]
    assert len({layer.seed for layer in layers}) == len(layers)  # each layer its own bases
    names = {n for n, _ in wrapped.named_parameters()}
    assert not any("basis" in n for n in names)
    assert not any("basis" in k for k in wrapped.state_dict())  # regenerable, so not saved
    for layer in layers:
        assert not layer.basis_a.requires_grad and not layer.basis_b.requires_grad
        assert layer.basis_a.shape == (16, 4, H) and layer.basis_b.shape == (8, H, 4)
        basis_a, basis_b, _ = random_bases(layer.seed, 16, 8, 4, H, H)
        torch.testing.assert_close(layer.basis_a, basis_a, rtol=0, atol=0)
        torch.testing.assert_close(layer.basis_b, basis_b, rtol=0, atol=0)
    for a, b in zip(layers, (m for m in again.modules() if isinstance(m, NolaLinear))):
        torch.testing.assert_close(a.coef_a, b.coef_a, rtol=0, atol=0)  # same seed, same start


# Bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        ("sora:r=1000", "rank 1000 exceeds layer 'bert.encoder.layer.0.attention.self.query' (32x32, at most 32)"),
        ("dylora:r=33", "rank 33 exceeds layer"),
        ("nola:r=40", "rank 40 exceeds layer"),
        ("sora:target_modules=[quer]", "target module 'quer' is not in the model; did you mean query"),
        ("dylora:target_modules=[nosuch]", "target module 'nosuch' is not in the model"),
        ("nola:target_modules=[attention]", "target module 'attention' matches no linear layer"),
        ("sora:target_modules=[classifier]", "matches no linear layer outside the task head"),
        ("sora:r=-1", "r=-1"),
        ("dylora:r=0", "r=0"),
        ("nola:num_basis_a=0", "num_basis_a=0"),
        ("sora:sparsity_lambda=-1", "sparsity_lambda=-1"),
        ("dylora:r=4,eval_rank=5", "eval_rank (5) must not exceed r (4)"),
    ],
)
def test_bad_input_is_a_harness_error(spec, message, model):
    with pytest.raises(HarnessError, match=re.escape(message)) as info:
        Pipeline.parse(spec).apply(model, ctx())
    assert "\n" not in str(info.value)
