"""Each method trains what its paper says: parameter counts from formulas, identity at
initialisation, merge equivalence, and a loss that goes down."""

from __future__ import annotations

import copy

import pytest
import torch

from harness.engine.loop import train
from harness.measure.size import count_parameters
from harness.methods.base import METHODS
from harness.methods.pipeline import Pipeline
from tests.support import TINY, ctx, loss_before_after

H, L, I = TINY["hidden_size"], TINY["num_hidden_layers"], TINY["intermediate_size"]
C = 2  # labels
HEAD = H * C + C  # the new classifier, trained by every method


def apply(spec: str, model, steps: int = 100):
    return Pipeline.parse(spec).apply(model, ctx(steps))


def bert_biases() -> int:
    # embeddings LayerNorm; per layer q, k, v, attn-out dense, attn LayerNorm, intermediate, out dense, out LayerNorm; pooler
    return H + L * (7 * H + I) + H


EXPECTED_TRAINABLE = {
    "full": None,  # every parameter
    "bitfit": bert_biases() + HEAD,  # every encoder bias, plus the whole new head
    "linear-probe": HEAD,  # the head alone
    "lora:r=4": L * 2 * 4 * (H + H) + HEAD,  # A (r x in) + B (out x r) on query and value
    "dora:r=4": L * 2 * (4 * (H + H) + H) + HEAD,  # LoRA + one magnitude per output feature
    "adalora:init_r=4,target_r=2": L * 2 * 4 * (H + H + 1) + HEAD,  # A, B and the singular values E
    "vera:r=8": L * 2 * (H + 8) + HEAD,  # lambda_b (out) + lambda_d (r); A, B shared and frozen
    # key, value: one vector of out size; attention.output.dense and output.dense match "output.dense"
    # and are feed-forward modules: one vector of in size (H and I)
    "ia3": L * (H + H + H + I) + HEAD,
}


@pytest.mark.parametrize("spec", list(EXPECTED_TRAINABLE))
def test_trainable_parameters_match_the_formula(spec, model):
    total_before = count_parameters(model)[1]
    wrapped = apply(spec, model)
    trainable, total = count_parameters(wrapped)
    expected = EXPECTED_TRAINABLE[spec]
    assert trainable == (total if expected is None else expected)
    if spec == "full":
        assert total == total_before


@pytest.mark.parametrize(
    "spec", ["lora:r=4", "dora:r=4", "adalora:init_r=4,target_r=2", "vera:r=8", "ia3", "bitfit", "full"]
)
def test_adapter_leaves_the_model_unchanged_at_initialisation(spec, model):
    inputs = {
        "input_ids": torch.tensor([[2, 5, 9, 14, 3], [2, 7, 20, 3, 0]]),
        "attention_mask": torch.tensor([[1] * 5, [1] * 4 + [0]]),
    }
    with torch.no_grad():
        before = model(**inputs).logits
    wrapped = apply(spec, copy.deepcopy(model)).eval()
    with torch.no_grad():
        after = wrapped(**inputs).logits
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["lora:r=4,merge=true", "dora:r=4,merge=true", "ia3:merge=true"])
def test_merging_gives_the_same_outputs(spec, model):
    pipeline = Pipeline.parse(spec)
    wrapped = pipeline.apply(model, ctx())
    with torch.no_grad():  # move the adapter away from its identity initialisation
        for name, p in wrapped.named_parameters():
            if p.requires_grad and "classifier" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    wrapped.eval()
    inputs = {"input_ids": torch.tensor([[2, 5, 9, 14, 3]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    with torch.no_grad():
        unmerged = wrapped(**inputs).logits
        merged_model = pipeline.finalize(wrapped).eval()
        merged = merged_model(**inputs).logits
    assert not any("lora_" in n or "ia3_" in n for n, _ in merged_model.named_parameters())
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "spec", ["full", "bitfit", "linear-probe", "lora:r=4", "dora:r=4", "adalora:init_r=4,target_r=2", "vera:r=8", "ia3"]
)
def test_a_few_steps_lower_the_loss(spec, model, train_data):
    context = ctx(30)
    context.lr = 1e-2 if spec != "full" else 1e-3
    before, after = loss_before_after(Pipeline.parse(spec), model, context, train_data, steps=30)
    assert after < before * 0.9, (before, after)


def test_adalora_reallocates_rank_during_training(model, train_data):
    """After the pruning phase, AdaLoRA's budget shrinks from init_r towards target_r."""
    data = train_data
    pipeline = Pipeline.parse("adalora:init_r=4,target_r=1,delta_t=1")
    context = ctx(24)
    wrapped = pipeline.apply(model, context)
    train(
        wrapped,
        data,
        pipeline,
        context,
        batch_size=16,
        steps=24,
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        precision="fp32",
        device=torch.device("cpu"),
        seed=0,
        show_progress=False,
    )
    kept = sum(
        int((m.lora_E["default"] != 0).sum())
        for m in wrapped.modules()
        if hasattr(m, "lora_E") and "default" in m.lora_E
    )
    assert kept < L * 2 * 4  # some of the 16 initial ranks were masked


def test_every_method_names_its_category_and_paper():
    for name, cls in METHODS:
        if name.startswith("test-"):
            continue
        assert cls.category and cls.paper and cls.summary(), name
