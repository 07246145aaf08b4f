"""LISA trains only its sampled layers and resamples on schedule; GaLore keeps Adam's
state in a low-rank projection (bytes from the formula); both lower the loss; bad
parameters are one-line HarnessErrors."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from harness.core.errors import HarnessError
from harness.engine.loop import train
from harness.measure.memory import optimizer_state_bytes
from harness.measure.size import count_parameters
from harness.methods.base import MethodContext
from harness.methods.optim import default_optimizer
from harness.methods.pipeline import Pipeline
from tests.support import TINY, WORDS, loss_before_after

H, L, I = TINY["hidden_size"], TINY["num_hidden_layers"], TINY["intermediate_size"]
C = 2  # labels
V, P, T = 5 + len(WORDS), 64, 2  # vocabulary (specials + words), positions, token types of the tiny BERT
EMBEDDINGS = (V + P + T) * H + 2 * H  # three tables + LayerNorm
POOLER = H * H + H
HEAD = H * C + C
# q, k, v, attention-out (H x H + bias), intermediate (I x H + I), output (H x I + H), two LayerNorms
LAYER = 4 * (H * H + H) + (H * I + I) + (I * H + H) + 2 * 2 * H
TOTAL = EMBEDDINGS + L * LAYER + POOLER + HEAD
F32 = 4  # bytes


def ctx(steps: int = 100, seed: int = 0, lr: float = 1e-3) -> MethodContext:
    return MethodContext(task_type="seq_cls", head_modules=("classifier",), total_steps=steps, lr=lr, seed=seed)


def run(model, pipeline, context, data, steps):
    return train(
        model,
        data,
        pipeline,
        context,
        batch_size=16,
        steps=steps,
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        precision="fp32",
        device=torch.device("cpu"),
        seed=0,
        show_progress=False,
    )


def layer_of(name: str) -> int | None:
    return int(name.split(".")[3]) if name.startswith("bert.encoder.layer.") else None


# LISA ------------------------------------------------------------------------------


def test_lisa_trainable_parameters_at_the_start_match_the_formula(model):
    assert count_parameters(model)[1] == TOTAL
    Pipeline.parse("lisa:n_layers=1").apply(model, ctx())
    # everything outside the layer list always trains, plus n_layers whole layers
    assert count_parameters(model) == (EMBEDDINGS + POOLER + HEAD + 1 * LAYER, TOTAL)


def test_lisa_trains_only_the_sampled_layers(model, train_data):
    pipeline = Pipeline.parse("lisa:n_layers=1,interval=100")
    wrapped = pipeline.apply(model, ctx(1))
    (active,) = pipeline.methods[0].active
    before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
    stats = run(wrapped, pipeline, ctx(1), train_data, 1)
    for name, p in wrapped.named_parameters():
        layer = layer_of(name)
        if layer is not None and layer != active:
            assert torch.equal(p, before[name]), name  # bit-identical
        elif name.endswith(".weight"):  # biases such as the key bias can get an exactly zero gradient
            assert not torch.equal(p, before[name]), name
    # Adam moments (2 per value) only for what trained: no state for the frozen layer
    assert stats.optimizer_state_bytes == 2 * F32 * (EMBEDDINGS + POOLER + HEAD + LAYER)


def test_lisa_keeps_optimizer_state_for_the_active_layers_only(model, train_data):
    """Across resamples the state does not grow to all layers: a layer switched off loses its moments."""
    pipeline = Pipeline.parse("lisa:n_layers=1,interval=2")
    wrapped = pipeline.apply(model, ctx(5))
    stats = run(wrapped, pipeline, ctx(5), train_data, 5)  # draws at steps 0, 2, 4
    method = pipeline.methods[0]
    assert method.ever_active == set(range(L))  # both layers trained at some point
    assert stats.optimizer_state_bytes == 2 * F32 * (EMBEDDINGS + POOLER + HEAD + LAYER)  # not 2 * F32 * TOTAL
    # finalize marks as trainable what training changed: here every layer
    assert count_parameters(pipeline.finalize(wrapped))[0] == TOTAL


def test_lisa_resamples_every_interval_steps_reproducibly_from_the_seed(model):
    k, steps = 3, 12

    def schedule(seed):
        method = Pipeline.parse(f"lisa:n_layers=1,interval={k}").methods[0]
        m = method.apply(copy.deepcopy(model), ctx(seed=seed))
        seen = [method.active]
        for step in range(steps):
            method.on_step(step, m)
            seen.append(method.active)  # the layers that train at step + 1
            for name, p in m.named_parameters():  # requires_grad follows the sample
                if layer_of(name) is not None:
                    assert p.requires_grad == (layer_of(name) in method.active), name
        return seen

    for seed in (0, 1):
        rng = random.Random(seed)
        periods = [tuple(rng.sample(range(L), 1)) for _ in range(steps // k + 1)]
        assert schedule(seed) == [periods[s // k] for s in range(steps + 1)]  # new draw at steps 0, K, 2K, ...
        assert schedule(seed) == schedule(seed)
    assert schedule(0) != schedule(1)


def test_lisa_puts_every_candidate_in_its_optimizer(model):
    """The loop clips over the optimizer's parameters, so layers sampled later are clipped too."""
    pipeline = Pipeline.parse("lisa:n_layers=1")
    wrapped = pipeline.apply(model, ctx())
    params = [p for p in wrapped.parameters() if p.requires_grad]
    optimizer = pipeline.optimizer(params, ctx())
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in wrapped.parameters()}
    assert len(params) < len(in_optimizer)  # one of the two layers starts frozen


# GaLore ----------------------------------------------------------------------------


def projected_shapes():
    """(out, in) of the targeted weights: q, k, v, attention-out, intermediate, output per layer."""
    return L * ([(H, H)] * 4 + [(I, H), (H, I)])


def galore_state_bytes(r: int) -> int:
    # galore_torch, proj_type "std": for G (m x n) with m >= n the projection is Vh[:r] (r x n)
    # and the moments are G P^T (m x r); otherwise U[:, :r] (m x r) and moments r x n.
    # Either way: two moments r x max(m, n) plus the projection r x min(m, n).
    projected = sum(r * (2 * max(m, n) + min(m, n)) for m, n in projected_shapes())
    rest = TOTAL - sum(m * n for m, n in projected_shapes())
    return F32 * (projected + 2 * rest)  # plain Adam on every other parameter


def one_step(model, optimizer, data):
    batch = data.collate([data.dataset[i] for i in range(16)])
    model.train()
    model(**batch).loss.backward()
    optimizer.step()
    return optimizer


def test_galore_optimizer_state_is_smaller_than_adam_and_matches_the_formula(model, train_data):
    r = 4
    adam_model = copy.deepcopy(model)
    adam = one_step(adam_model, default_optimizer(list(adam_model.named_parameters()), 1e-3, 0.0), train_data)
    assert optimizer_state_bytes(adam) == 2 * F32 * TOTAL

    pipeline = Pipeline.parse(f"galore:rank={r}")
    wrapped = pipeline.apply(model, ctx())
    assert count_parameters(wrapped) == (TOTAL, TOTAL)  # full-parameter training
    galore = one_step(
        wrapped, pipeline.optimizer([p for p in wrapped.parameters() if p.requires_grad], ctx()), train_data
    )
    assert optimizer_state_bytes(galore) == galore_state_bytes(r) < optimizer_state_bytes(adam)
    projectors = [s["projector"] for s in galore.state.values() if "projector" in s]
    assert len(projectors) == len(projected_shapes())
    for proj in projectors:  # the projection owns exactly its r-wide memory, not the full SVD factor
        m = proj.ortho_matrix
        assert r in m.shape and m.untyped_storage().nbytes() == m.numel() * F32


# Both --------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["lisa:n_layers=1,interval=10", "galore:rank=4"])
def test_a_few_steps_lower_the_loss(spec, model, train_data):
    before, after = loss_before_after(Pipeline.parse(spec), model, ctx(30, lr=3e-3), train_data, steps=30)
    assert after < before * 0.9, (before, after)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("lisa:n_layers=99", "2 layers"),
        ("lisa:n_layers=0", "2 layers"),
        ("lisa:interval=0", "interval"),
        ("galore:rank=33", "rank 33 exceeds layer .* at most 32"),
        ("galore:rank=0", "rank"),
        ("galore:target_modules=[nosuch]", "nosuch"),
    ],
)
def test_bad_parameters_are_harness_errors(spec, message, model):
    with pytest.raises(HarnessError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        Pipeline.parse(spec).apply(model, ctx())
    assert "\n" not in str(err.value)
