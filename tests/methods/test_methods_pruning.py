"""Pruning methods: exact sparsity, the kept weights are the right ones, the 2:4 pattern,
Wanda against a brute-force score, masks that survive fine-tuning, honest sizes, and a
CLI run on the tiny CIFAR mirror."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.core.errors import HarnessError
from harness.data.vision_models import resnet20
from harness.methods.base import MethodContext
from harness.methods.compress import compressible_layers, dense_bytes_except
from harness.methods.pipeline import Pipeline
from harness.results.store import read_results
from tests.support import run_cifar

HEAD = ("linear",)


def ctx(batches=None, steps: int = 10) -> MethodContext:
    return MethodContext(
        task_type="image_cls",
        head_modules=HEAD,
        total_steps=steps,
        lr=1e-2,
        seed=0,
        sample_batches=(lambda n: iter(batches[:n])) if batches is not None else None,
    )


def image_batches(n: int = 2, size: int = 4, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "pixel_values": torch.randn(size, 3, 32, 32, generator=g),
            "labels": torch.randint(0, 10, (size,), generator=g),
        }
        for _ in range(n)
    ]


@pytest.fixture()
def net():
    torch.manual_seed(0)
    return resnet20().eval()


def pruned_weights(model):
    return [(n, m.weight.detach()) for n, m in compressible_layers(model, HEAD)]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_magnitude_per_layer_exact_sparsity_and_largest_kept(net, sparsity):
    original = {n: w.clone() for n, w in pruned_weights(net)}
    head = net.linear.weight.detach().clone()
    Pipeline.parse(f"magnitude:sparsity={sparsity}").apply(net, ctx())
    for name, w in pruned_weights(net):
        before = original[name]
        assert int((w == 0).sum()) == round(sparsity * w.numel()), name
        kept = w != 0
        assert torch.equal(w[kept], before[kept])  # kept weights are untouched
        if kept.any() and (~kept).any():
            assert before[kept].abs().min() >= before[~kept].abs().max()  # the largest are kept
    assert torch.equal(net.linear.weight, head)  # the head is not pruned
    assert not any(p.requires_grad for p in net.parameters())  # pruning alone trains nothing


def test_magnitude_global_scope(net):
    original = torch.cat([w.reshape(-1).clone() for _, w in pruned_weights(net)])
    Pipeline.parse("magnitude:sparsity=0.6,scope=global").apply(net, ctx())
    after = torch.cat([w.reshape(-1) for _, w in pruned_weights(net)])
    assert int((after == 0).sum()) == round(0.6 * after.numel())
    kept = after != 0
    assert original[kept].abs().min() >= original[~kept].abs().max()
    per_layer = [float((w == 0).float().mean()) for _, w in pruned_weights(net)]
    assert max(per_layer) - min(per_layer) > 0.05  # one threshold: layers differ, unlike scope=layer


def test_magnitude_ties_are_deterministic():
    layer = nn.Linear(8, 2, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    model = nn.Sequential(layer)
    Pipeline.parse("magnitude:sparsity=0.5").apply(model, MethodContext(task_type="seq_cls"))
    # equal scores: the lower flat indices are pruned first
    assert torch.equal(layer.weight.reshape(-1) == 0, torch.arange(16) < 8)


def test_two_four_pattern(net):
    with torch.no_grad():  # one exact zero in a group of a pruned layer: that group keeps at most 2
        net.layer1[0].conv1.weight[0, 0, 0, 0] = 0.0
    original = {n: w.clone() for n, w in pruned_weights(net)}
    Pipeline.parse("two-four").apply(net, ctx())
    first = net.conv1.weight
    assert first.shape[1] * 9 == 27 and torch.equal(first, original["conv1"])  # 27 inputs: skipped, left dense
    checked = 0
    for name, w in pruned_weights(net):
        if name == "conv1":
            continue
        groups = w.reshape(w.shape[0], -1, 4)
        before = original[name].reshape(w.shape[0], -1, 4)
        nonzero = (groups != 0).sum(dim=2)
        assert (nonzero <= 2).all(), name
        full = (before != 0).all(dim=2)
        assert (nonzero[full] == 2).all(), name  # exactly 2 where the original had no zero
        # the kept two are the two largest of their group
        kept_min = torch.where(groups != 0, groups.abs(), torch.inf).amin(dim=2)
        pruned_max = torch.where(groups == 0, before.abs(), -torch.inf).amax(dim=2)
        assert (kept_min[full] >= pruned_max[full]).all()
        checked += 1
    assert checked == 18  # every block conv of ResNet-20


def test_wanda_matches_brute_force_on_a_linear():
    torch.manual_seed(0)
    layer = nn.Linear(6, 3, bias=True)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = layer

        def forward(self, x, labels=None):
            return self.fc(x)

    original = layer.weight.detach().clone()
    # inputs whose feature norms differ strongly: the ranking differs from plain magnitude
    scale = torch.tensor([10.0, 0.1, 1.0, 5.0, 0.01, 2.0])
    batches = [{"x": torch.randn(4, 5, 6) * scale} for _ in range(3)]
    Pipeline.parse("wanda:sparsity=0.5,n_batches=3").apply(
        Net(), MethodContext(task_type="seq_cls", sample_batches=lambda n: iter(batches[:n]))
    )
    tokens = torch.cat([b["x"].reshape(-1, 6) for b in batches])
    norm = torch.sqrt((tokens**2).sum(dim=0))
    score = original.abs() * norm
    expected = torch.zeros_like(original, dtype=torch.bool)
    for i in range(3):  # per output row: keep the 3 best of 6
        expected[i, torch.topk(score[i], 3).indices] = True
    assert torch.equal(layer.weight != 0, expected)
    assert torch.equal(layer.weight[expected], original[expected])
    magnitude_only = torch.zeros_like(expected)
    for i in range(3):
        magnitude_only[i, torch.topk(original[i].abs(), 3).indices] = True
    assert not torch.equal(expected, magnitude_only)  # the activations mattered


def test_wanda_conv_norms_are_the_unfolded_patch_norms():
    from harness.methods.compress import input_feature_norms

    conv = nn.Conv2d(2, 4, 3, padding=1, stride=2, bias=False)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x)

    x = torch.randn(3, 2, 7, 7)
    norms = input_feature_norms(Net(), [("conv", conv)], [{"x": x}], "wanda")["conv"]
    # brute force: every output position's patch (zero-padded), element (c, i, j)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    expected = torch.zeros(2, 3, 3)
    for oy in range(4):
        for ox in range(4):
            expected += padded[:, :, 2 * oy : 2 * oy + 3, 2 * ox : 2 * ox + 3].pow(2).sum(dim=0)
    assert torch.allclose(norms, expected.sqrt().reshape(-1), rtol=1e-5)


def test_wanda_on_resnet_per_row_sparsity(net):
    Pipeline.parse("wanda:sparsity=0.5,n_batches=2").apply(net, ctx(image_batches()))
    for name, w in pruned_weights(net):
        rows = w.reshape(w.shape[0], -1)
        assert ((rows == 0).sum(dim=1) == round(0.5 * rows.shape[1])).all(), name


@pytest.mark.parametrize(
    "spec, message",
    [
        ("magnitude:sparsity=1.0", r"^method 'magnitude': sparsity=1\.0: Input should be less than 1$"),
        (
            "magnitude:sparsity=-0.1",
            r"^method 'magnitude': sparsity=-0\.1: Input should be greater than or equal to 0$",
        ),
        ("wanda:sparsity=1.5", r"^method 'wanda': sparsity=1\.5: Input should be less than 1$"),
        ("magnitude:scope=row", r"^method 'magnitude': scope='row': Input should be 'layer' or 'global'$"),
        ("wanda:n_batches=0", r"^method 'wanda': n_batches=0: Input should be greater than or equal to 1$"),
        ("two-four:sparsity=0.5", r"^method 'two-four': unknown parameter 'sparsity' \(valid: none\)$"),
    ],
)
def test_bad_parameters_are_one_line_errors(spec, message):
    with pytest.raises(HarnessError, match=message) as info:
        Pipeline.parse(spec)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "spec", ["magnitude:sparsity=0.5+full", "two-four+full", "wanda:sparsity=0.5,n_batches=2+full"]
)
def test_masks_survive_fine_tuning(net, spec):
    pipeline = Pipeline.parse(spec)
    c = ctx(image_batches())
    model = pipeline.apply(net, c)
    assert all(p.requires_grad for p in model.parameters())  # the later step decides what trains
    zeros = {n: (w == 0).clone() for n, w in pruned_weights(model)}
    before = {n: w.clone() for n, w in pruned_weights(model)}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    for step, batch in enumerate(image_batches(3, seed=1)):
        model(**batch).loss.backward()
        opt.step()
        pipeline.on_step(step, model)
        opt.zero_grad()
    model = pipeline.finalize(model)
    for name, w in pruned_weights(model):
        assert (w[zeros[name]] == 0).all(), name
        assert not torch.equal(w, before[name])  # the kept weights did train


def test_masks_survive_the_training_loop(net):
    from harness.engine.loop import Prepared, train

    pipeline = Pipeline.parse("magnitude:sparsity=0.5+full")
    model = pipeline.apply(net, ctx())
    zeros = {n: (w == 0).clone() for n, w in pruned_weights(model)}
    data = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 10} for i in range(8)]

    def collate(items):
        return {
            "pixel_values": torch.stack([d["pixel_values"] for d in items]),  # noqa: E731
            "labels": torch.tensor([d["labels"] for d in items]),
        }

    stats = train(
        model,
        Prepared(data, collate, [d["labels"] for d in data]),
        pipeline,
        ctx(),
        batch_size=4,
        steps=3,
        warmup_ratio=0.0,
        max_grad_norm=1.0,
        precision="fp32",
        device=torch.device("cpu"),
        seed=0,
        show_progress=False,
    )
    assert stats.steps == 3
    for name, w in pruned_weights(pipeline.finalize(model)):
        assert (w[zeros[name]] == 0).all(), name


@pytest.mark.parametrize("spec", ["magnitude:sparsity=0.5", "two-four", "wanda:sparsity=0.5,n_batches=1"])
def test_compression_is_simulated_and_smaller(net, spec):
    dense = dense_bytes_except(net, [])
    pipeline = Pipeline.parse(spec)
    model = pipeline.finalize(pipeline.apply(net, ctx(image_batches(1))))
    comp = pipeline.compression(model)
    assert comp.kernel == "simulated" and comp.weight_bits is None
    assert comp.compressed_bytes < dense
    layers = compressible_layers(model, HEAD)
    rest = dense - sum(m.weight.numel() * 4 for _, m in layers)
    if spec == "two-four":  # 27-input first conv dense; the rest at half the values + 2-bit indices
        expected = (
            rest
            + 27 * 16 * 4
            + sum(m.weight.numel() // 2 * 4 + m.weight.numel() // 8 for n, m in layers if n != "conv1")
        )
    else:  # non-zeros at 4 bytes + a 1-bit mask per weight
        expected = rest + sum(int((m.weight != 0).sum()) * 4 + -(-m.weight.numel() // 8) for _, m in layers)
    assert comp.compressed_bytes == expected


def test_cli_run_magnitude_on_the_tiny_mirror(tiny_ckpt, cifar_mirror, tmp_path):  # noqa: F811
    assert run_cifar(tiny_ckpt, cifar_mirror, tmp_path / "r", "--method", "magnitude:sparsity=0.5") == 0
    row = read_results(tmp_path / "r").iloc[0]
    assert row["status"] == "ok" and row["method"] == "magnitude" and row["trainable_params"] == 0
    # every conv is pruned to exactly half (round(0.5 * numel) = numel / 2: all even); the head stays dense
    model = resnet20()
    convs = [m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d)]
    expected = sum(round(0.5 * n) for n in convs) / (sum(convs) + model.linear.weight.numel())
    assert row["weight_sparsity"] == pytest.approx(expected, abs=1e-9)
    assert 0.49 < expected < 0.5
    assert row["compression_kernel"] == "simulated"
    assert row["compressed_model_bytes"] < row["model_bytes"]
