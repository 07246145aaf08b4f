"""Methods as their papers and official code define them: SoRA's gate optimizer and L1 term,
GaLore's fine-tuning recipe and projected update, LISA's gamma, and the calibrated
compressors' token budget and GPTQ's sequential, shared-Hessian calibration."""

from __future__ import annotations

import copy
import math
import weakref

import pytest
import torch

from harness.engine.loop import sample_batches, train
from harness.methods.base import Method, MethodContext
from harness.methods.compress import PAPER_TOKENS, calibration_set, calibration_units
from harness.methods.gptq import Gptq, SharedHessians, gptq_quantize
from harness.methods.pipeline import Pipeline
from harness.methods.sora import SoraAdamW, SoraLinear


def ctx(lr=1e-3, weight_decay=0.0, data=None, steps=10) -> MethodContext:
    return MethodContext(
        task_type="seq_cls",
        head_modules=("classifier",),
        total_steps=steps,
        lr=lr,
        weight_decay=weight_decay,
        seed=0,
        sample_batches=(lambda n: sample_batches(data, 16, n, 0)) if data is not None else None,
    )


def run(model, pipeline, context, data, steps):
    return train(
        model,
        data,
        pipeline,
        context,
        batch_size=16,
        steps=steps,
        warmup_ratio=0.0,
        max_grad_norm=0.0,
        precision="fp32",
        device=torch.device("cpu"),
        seed=0,
        show_progress=False,
    )


# SoRA ------------------------------------------------------------------------------


def test_sora_defaults_are_the_official_glue_script():
    p = Pipeline.parse("sora").methods[0]
    assert (p.params.r, p.params.sparsity_lambda, p.params.l1_lambda, p.default_lr) == (8, 3e-4, 10.0, 8e-4)


def test_sora_gate_step_is_the_official_adam_update_then_the_soft_threshold():
    lr, xi, b1, b2, eps = 0.01, 3e-4, 0.9, 0.999, 1e-6
    start = [0.5, -0.3, 1e-4, 2.0]
    grads = [[0.1, -0.2, 0.0, 0.05], [0.2, 0.1, 0.0, -0.3]]
    gate = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer = SoraAdamW([{"params": [gate], "weight_decay": 0.0, "gate_threshold": xi}], lr=lr)
    expected, m, v = list(start), [0.0] * 4, [0.0] * 4
    for t, g in enumerate(grads, start=1):
        gate.grad = torch.tensor(g, dtype=torch.float64)
        optimizer.step()
        for i in range(4):  # transformers-style Adam: bias correction in the step size, eps on sqrt(v)
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            w = expected[i] - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m[i] / (math.sqrt(v[i]) + eps)
            expected[i] = math.copysign(max(abs(w) - xi, 0.0), w)  # soft threshold
        torch.testing.assert_close(gate.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert expected[2] == 0.0 and gate[2] == 0  # a small entry with no gradient: exactly zero


def test_sora_gate_is_out_of_the_decayed_groups_and_takes_no_weight_decay(model):
    pipeline = Pipeline.parse("sora:r=4")
    context = ctx(lr=0.1, weight_decay=0.5)
    wrapped = pipeline.apply(model, context)
    optimizer = pipeline.optimizer([p for p in wrapped.parameters() if p.requires_grad], context)
    gates = [m.gate for m in wrapped.modules() if isinstance(m, SoraLinear)]
    gate_groups = [g for g in optimizer.param_groups if "gate_threshold" in g]
    assert len(gate_groups) == 1 and gate_groups[0]["weight_decay"] == 0.0
    assert {id(p) for p in gate_groups[0]["params"]} == {id(g) for g in gates}
    others = {id(p) for g in optimizer.param_groups if "gate_threshold" not in g for p in g["params"]}
    assert not others & {id(g) for g in gates}
    before = gates[0].detach().clone()
    for p in wrapped.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()  # zero gradient: decay would shrink by lr * wd * g = 5% of g; only the threshold acts
    torch.testing.assert_close(gates[0].detach(), before.sign() * (before.abs() - 3e-4).clamp(min=0))


def test_sora_l1_term_is_lambda_times_the_mean_absolute_gate(model):
    pipeline = Pipeline.parse("sora:r=4,l1_lambda=10")
    wrapped = pipeline.apply(model, ctx())
    gates = torch.cat([m.gate.detach() for m in wrapped.modules() if isinstance(m, SoraLinear)])
    # official compute_loss: sparse_lambda * sum|g| / (number of gate entries)
    torch.testing.assert_close(pipeline.extra_loss(wrapped).detach(), 10 * gates.abs().sum() / gates.numel())
    assert Pipeline.parse("sora:l1_lambda=0").methods[0].extra_loss(wrapped) is None


class _Probe(Method):
    """Trains the head's bias with a huge extra term c * sum(bias): Adam's first step is then -lr per entry."""

    name = "probe"

    def apply(self, model, ctx):
        for n, p in model.named_parameters():
            p.requires_grad = n == "classifier.bias"
        return model

    def extra_loss(self, model):
        return 1e6 * model.classifier.bias.sum()


def test_the_training_loop_adds_a_methods_extra_loss_each_step(model, train_data):
    pipeline = Pipeline([_Probe()])
    context = ctx(lr=1e-2, data=train_data)
    wrapped = pipeline.apply(model, context)
    before = wrapped.classifier.bias.detach().clone()
    run(wrapped, pipeline, context, train_data, steps=1)
    torch.testing.assert_close(wrapped.classifier.bias.detach(), before - 1e-2, rtol=0, atol=1e-6)


def test_sora_records_the_ranks_it_keeps(model):
    pipeline = Pipeline.parse("sora:r=4")
    wrapped = pipeline.apply(model, ctx())
    layers = [m for m in wrapped.modules() if isinstance(m, SoraLinear)]
    with torch.no_grad():
        layers[0].gate[:3] = 0.0
    pipeline.finalize(wrapped)
    notes = pipeline.costs[0].notes
    assert notes == {"ranks_max": 4 * len(layers), "ranks_kept": 4 * len(layers) - 3}


# GaLore ------------------------------------------------------------------------------


def test_galore_defaults_are_the_authors_glue_fine_tuning_recipe(model):
    pipeline = Pipeline.parse("galore")
    assert pipeline.default_lr == 3e-5  # README: --learning_rate 3e-5
    params = pipeline.resolved_params()[0]["params"]
    assert (params["rank"], params["scale"], params["update_proj_gap"]) == (4, 4.0, 500)
    context = ctx(lr=3e-5)
    wrapped = pipeline.apply(model, context)
    optimizer = pipeline.optimizer([p for p in wrapped.parameters() if p.requires_grad], context)
    projected = [g for g in optimizer.param_groups if "rank" in g]
    assert len(projected) == 1 and (projected[0]["rank"], projected[0]["scale"], projected[0]["update_proj_gap"]) == (
        4,
        4.0,
        500,
    )
    assert {g["lr"] for g in optimizer.param_groups} == {3e-5}  # what is not projected trains at the same rate


def test_galore_projected_update_is_lr_times_scale_times_the_projected_adam_step(model):
    lr, r, scale, b1, b2, eps = 1e-3, 4, 4.0, 0.9, 0.999, 1e-6
    pipeline = Pipeline.parse("galore")
    context = ctx(lr=lr)
    wrapped = pipeline.apply(model, context)
    optimizer = pipeline.optimizer([p for p in wrapped.parameters() if p.requires_grad], context)
    torch.manual_seed(0)
    for p in wrapped.parameters():
        p.grad = torch.randn_like(p)
    weight = wrapped.bert.encoder.layer[0].intermediate.dense.weight  # 48 x 32: m >= n, right projection
    bias = wrapped.bert.encoder.layer[0].intermediate.dense.bias
    G, gb = weight.grad.clone(), bias.grad.clone()
    W0, b0 = weight.detach().clone(), bias.detach().clone()
    optimizer.step()
    P = torch.linalg.svd(G, full_matrices=False)[2][:r]  # r x n
    R = G @ P.T
    adam = (1 - b1) * R / (((1 - b2) * R**2).sqrt() + eps)  # first step: m / (sqrt(v) + eps)
    step_size = lr * math.sqrt(1 - b2) / (1 - b1)
    torch.testing.assert_close(
        weight.detach() - W0, -step_size * scale * (adam @ P), rtol=1e-4, atol=2e-7
    )  # float32 rounding of W + dW
    plain = (1 - b1) * gb / ((1 - b2) * gb**2).sqrt().add(eps)
    torch.testing.assert_close(bias.detach() - b0, -step_size * plain, rtol=1e-4, atol=2e-7)


# LISA --------------------------------------------------------------------------------


def test_lisa_defaults_are_the_lmflow_script():
    params = Pipeline.parse("lisa").methods[0].params
    assert (params.n_layers, params.interval) == (1, 20)  # lisa_activated_layers=1, lisa_interval_steps=20


# Calibration budget ------------------------------------------------------------------


def test_the_calibration_budget_counts_non_padding_tokens(train_data):
    context = ctx(data=train_data)
    every = list(context.batches(10**6))
    total = sum(int(b["attention_mask"].sum()) for b in every)
    batches, tokens = calibration_set(context, 100)
    assert tokens == sum(calibration_units(b) for b in batches) >= 100
    assert tokens - calibration_units(batches[-1]) < 100  # whole batches, no more than needed
    everything, tokens = calibration_set(context, PAPER_TOKENS)
    assert (len(everything), tokens) == (len(every), total)  # the split holds fewer: all of it
    assert calibration_units({"pixel_values": torch.zeros(3, 3, 8, 8)}) == 3 * 2048  # an image is one 2048-token sample
    assert PAPER_TOKENS == 128 * 2048 == 262_144


@pytest.mark.parametrize("spec", ["gptq", "wanda"])
def test_calibrated_compressors_default_to_the_papers_budget_and_record_what_they_used(spec, model, train_data):
    pipeline = Pipeline.parse(spec)
    method = pipeline.methods[0]
    assert method.params.calibration_tokens == 262_144
    context = ctx(data=train_data)
    pipeline.apply(model, context)
    total = sum(int(b["attention_mask"].sum()) for b in context.batches(10**6))
    assert pipeline.costs[0].notes["calibration_tokens"] == total  # the tiny split holds fewer: all of it


# GPTQ: sequential, shared Hessians -----------------------------------------------------


def test_gptq_holds_one_blocks_hessians_at_a_time(model, train_data, monkeypatch):
    import harness.methods.gptq as gptq

    live: weakref.WeakSet = weakref.WeakSet()
    peak = [0]

    class Counting(SharedHessians):
        def __init__(self):
            super().__init__()
            live.add(self)

        def observe(self, name, module, x):
            super().observe(name, module, x)
            peak[0] = max(peak[0], sum(len(h) for h in live))

    monkeypatch.setattr(gptq, "SharedHessians", Counting)
    pipeline = Pipeline.parse("gptq:calibration_batches=2,group_size=0")
    pipeline.apply(model, ctx(data=train_data))
    # a BERT block: q/k/v (one input), attention-out, intermediate, output; of 13 layers in all
    assert peak[0] == 4 == pipeline.costs[0].notes["max_live_hessians"]


def test_gptq_layers_reading_one_input_share_one_hessian(model, train_data, monkeypatch):
    seen = {}
    original = Gptq.quantize_layer

    def record(self, layer, hessian):
        seen[id(layer)] = hessian
        return original(self, layer, hessian)

    monkeypatch.setattr(Gptq, "quantize_layer", record)
    Pipeline.parse("gptq:calibration_batches=2,group_size=0").apply(model, ctx(data=train_data))
    att = model.bert.encoder.layer[0].attention
    q, k, v = (seen[id(getattr(att.self, n))] for n in ("query", "key", "value"))
    assert q is k is v
    assert seen[id(att.output.dense)] is not q


def hessians_by_hand(model, layers, batches):
    """2/n X^T X of each layer's real (non-padding) input tokens, one full forward per batch."""
    sums, counts, handles = {}, {}, []
    mask = [None]

    def hook_for(name):
        def hook(module, args):
            x = args[0].detach().float()
            x = x[mask[0]] if x.dim() == 3 else x
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    for name, module in layers:
        handles.append(module.register_forward_pre_hook(hook_for(name)))
    model.eval()
    with torch.no_grad():
        for b in batches:
            mask[0] = b["attention_mask"].bool()
            model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b.get("token_type_ids"))
    for h in handles:
        h.remove()
    return {n: 2 * sums[n] / counts[n] for n in sums}


def quantize_by_hand(layers, hessians):
    with torch.no_grad():
        for name, m in layers:
            m.weight.copy_(gptq_quantize(m.weight, hessians[name], 3, 0, 0.01).values)


def test_gptq_calibrates_each_block_on_the_quantized_blocks_before_it(model, train_data):
    context = ctx(data=train_data)
    batches = list(context.batches(2))
    dense = copy.deepcopy(model)

    def names(prefix, m):
        return [(n, mod) for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and n.startswith(prefix)]

    by_hand = copy.deepcopy(model)
    for prefix in ("bert.encoder.layer.0.", "bert.encoder.layer.1.", "bert.pooler."):
        group = names(prefix, by_hand)
        quantize_by_hand(group, hessians_by_hand(by_hand, group, batches))

    Pipeline.parse("gptq:bits=3,group_size=0,calibration_batches=2").apply(model, context)
    for (n, a), (_, b) in zip(names("bert.", model), names("bert.", by_hand)):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=1e-6, msg=n)

    # the one-pass variant (block 1 calibrated on the dense block 0) gives other weights
    one_pass = names("bert.encoder.layer.1.", dense)
    quantize_by_hand(one_pass, hessians_by_hand(dense, one_pass, batches))
    differs = [
        not torch.allclose(a.weight, b.weight)
        for (_, a), (_, b) in zip(names("bert.encoder.layer.1.", model), one_pass)
    ]
    assert any(differs)
