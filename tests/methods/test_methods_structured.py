"""Compression into a smaller dense model: structured pruning (`channel`) and activation-aware
truncated SVD (`svd:activation_aware=true`).

Structured pruning: closed-form parameter counts; masked equivalence (the pruned model
computes exactly what the unpruned one computes with the removed units' weights zeroed,
which proves that the right units went and the wiring is right); the importance rankings;
LoRA on the pruned model; bad input. ASVD: exact at full rank, a smaller output error than
plain SVD on inputs of unequal scales, and bad input.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from harness.core.errors import HarnessError
from harness.data.vision_models import resnet20
from harness.measure.size import model_bytes
from harness.methods.base import MethodContext
from harness.methods.pipeline import Pipeline
from harness.methods.structured_pruning import find_groups
from harness.methods.svd import factorise
from harness.results.store import read_results, result_files
from tests.support import resnet20_parameter_count, run_cifar

RESNET_HEAD = ("linear",)


def ctx(head=(), batches=None, task_type="image_cls") -> MethodContext:
    return MethodContext(
        task_type=task_type,
        head_modules=head,
        sample_batches=(lambda n: iter(batches[:n])) if batches is not None else None,
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def kept_after(n: int, share: float) -> int:
    return max(1, n - round(share * n))


def lowest(scores: torch.Tensor, share: float) -> list[int]:
    """The units a share removes: the lowest scores, ties to the lower index (as the method)."""
    n = scores.numel()
    return sorted(torch.argsort(scores, stable=True)[: n - kept_after(n, share)].tolist())


@pytest.fixture()
def net():
    """ResNet-20 with random batch-norm statistics and affine terms, so that the BNs matter."""
    torch.manual_seed(0)
    model = resnet20()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture()
def bert(model):  # conftest's tiny BERT: hidden 32, 2 layers, 2 heads of 16, FFN 48
    return model


@pytest.fixture()
def vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
        num_labels=3,
    )
    return ViTForImageClassification(config).eval()


def bert_inputs():
    ids = torch.randint(5, 20, (3, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0  # padding too
    return {"input_ids": ids, "attention_mask": mask}


# Which units go ------------------------------------------------------------------------


def removed_units(model: nn.Module, group, share: float) -> list[int]:
    """Li et al.'s L1 ranking, computed here independently: sum |w| of the producer rows per unit."""
    score = sum(
        model.get_submodule(p)
        .weight.detach()
        .abs()
        .reshape(-1, group.unit_size, model.get_submodule(p).weight[0].numel())
        .sum(dim=(1, 2))
        for p in group.producers
    )
    return lowest(score, share)


def zero_units(model: nn.Module, group, units: list[int]) -> None:
    """Zero every weight of the removed units: producer rows and biases, BN affine terms, consumer columns."""
    index = torch.tensor([u * group.unit_size + i for u in units for i in range(group.unit_size)], dtype=torch.long)
    with torch.no_grad():
        for name in group.producers:
            layer = model.get_submodule(name)
            layer.weight[index] = 0
            if layer.bias is not None:
                layer.bias[index] = 0
        for name in group.between:  # BN output = weight * normalised + bias = 0 for these channels
            model.get_submodule(name).weight[index] = 0
            model.get_submodule(name).bias[index] = 0
        model.get_submodule(group.consumer).weight[:, index] = 0


CASES = {  # fixture, task head, method, share removed per kind of unit, inputs
    "resnet20": ("net", RESNET_HEAD, "channel:sparsity=0.5", {"channel": 0.5}),
    "bert": ("bert", ("classifier",), "channel:sparsity=0.5,heads=0.5", {"neuron": 0.5, "head": 0.5}),
    "vit": ("vit", ("classifier",), "channel:sparsity=0.25,heads=0.5", {"neuron": 0.25, "head": 0.5}),
}


def inputs_for(case: str) -> dict:
    if case == "bert":
        return bert_inputs()
    size = 32 if case == "resnet20" else 8
    return {"pixel_values": torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))}


@pytest.mark.parametrize("case", CASES)
def test_pruned_model_equals_the_masked_unpruned_model(case, request):
    fixture, head, spec, shares = CASES[case]
    model = request.getfixturevalue(fixture)
    groups = find_groups(model, head)
    assert {g.kind for g in groups} == set(shares)
    masked = copy.deepcopy(model)
    for group in groups:
        zero_units(masked, group, removed_units(model, group, shares[group.kind]))
    pruned = Pipeline.parse(spec).apply(model, ctx(head))
    assert n_params(pruned) < n_params(masked)
    assert not any(m.training for m in pruned.modules())  # eval mode kept: BN uses its running statistics
    with torch.no_grad():
        torch.testing.assert_close(
            pruned(**inputs_for(case)).logits, masked(**inputs_for(case)).logits, atol=1e-5, rtol=1e-5
        )
    assert not any(p.requires_grad for p in pruned.parameters())  # pruning alone trains nothing
    assert all(type(pruned.get_submodule(g.consumer)) in (nn.Linear, nn.Conv2d) for g in groups)  # plain layers


def test_resnet20_groups_and_kept_channels_are_the_largest_l1_filters(net):
    groups = find_groups(net, RESNET_HEAD)
    # one conv1 -> bn1 -> conv2 chain per basic block; the stem (conv1 with no conv2) and the head are not groups
    assert [(g.producers, g.between, g.consumer) for g in groups] == [
        ((f"layer{s}.{b}.conv1",), (f"layer{s}.{b}.bn1",), f"layer{s}.{b}.conv2") for s in (1, 2, 3) for b in range(3)
    ]
    original = {g.producers[0]: net.get_submodule(g.producers[0]).weight.detach().clone() for g in groups}
    Pipeline.parse("channel:sparsity=0.75").apply(net, ctx(RESNET_HEAD))
    for name, before in original.items():
        after = net.get_submodule(name).weight
        l1 = before.abs().sum(dim=(1, 2, 3))
        kept = sorted(torch.topk(l1, kept_after(len(l1), 0.75)).indices.tolist())
        assert torch.equal(after, before[kept]), name  # the top filters, in their original order


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_resnet20_parameter_count_closed_form(net, sparsity):
    Pipeline.parse(f"channel:sparsity={sparsity}").apply(net, ctx(RESNET_HEAD))
    # per block: conv1 (cin -> k, 3x3), bn1 (2k), conv2 (k -> w, 3x3); bn2, stem and head unchanged
    expected, cin = resnet20_parameter_count(), 16
    for width in (16, 32, 64):
        for _ in range(3):
            k = kept_after(width, sparsity)
            expected -= (cin * 9 + 2 + width * 9) * (width - k)
            cin = width
    assert n_params(net) == expected
    assert net(pixel_values=torch.randn(1, 3, 32, 32)).logits.shape == (1, 10)


def test_at_least_one_unit_is_kept(net):
    Pipeline.parse("channel:sparsity=0.99").apply(net, ctx(RESNET_HEAD))
    assert all(m.conv1.out_channels == 1 for s in (1, 2, 3) for m in getattr(net, f"layer{s}"))


def test_bert_parameter_count_closed_form_and_honest_config(bert):
    hidden, layers, heads, size, ffn = 32, 2, 2, 16, 48
    before = n_params(bert)
    Pipeline.parse("channel:sparsity=0.5,heads=0.5").apply(bert, ctx(("classifier",), task_type="seq_cls"))
    m, h = kept_after(ffn, 0.5), kept_after(heads, 0.5)
    ffn_saved = (hidden + 1 + hidden) * (ffn - m)  # intermediate rows + biases, output columns
    head_saved = (3 * (hidden + 1) + hidden) * size * (heads - h)  # q, k, v rows + biases, output columns
    assert n_params(bert) == before - layers * (ffn_saved + head_saved)
    attention = bert.bert.encoder.layer[0].attention.self
    assert (attention.num_attention_heads, attention.all_head_size) == (h, h * size)
    assert bert.config.intermediate_size == m  # every layer keeps the same FFN width


def test_activation_importance_keeps_the_largest_wanda_scores():
    class Net(nn.Module):  # an fc1 -> fc2 FFN, as ViT's mlp
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(4, 5, 6) * torch.tensor([20.0, 0.1, 5.0, 0.01, 1.0, 3.0])
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    hidden = torch.relu(model.fc1(x)).detach().reshape(-1, 8)
    wanda = hidden.norm(dim=0) * w2.abs().sum(dim=0)  # ||X_c|| * sum_i |W2_ic|
    batches = [{"x": x[:2], "labels": torch.zeros(2)}, {"x": x[2:]}]  # labels are never passed to the model
    Pipeline.parse("channel:sparsity=0.5,importance=activation,n_batches=2").apply(model, ctx(batches=batches))
    kept = sorted(set(range(8)) - set(lowest(wanda, 0.5)))
    assert torch.equal(model.fc1.weight, w1[kept]) and torch.equal(model.fc2.weight, w2[:, kept])
    assert kept != sorted(set(range(8)) - set(lowest(w1.abs().sum(dim=1), 0.5)))  # not what l1 keeps


@pytest.mark.parametrize("case", ["resnet20", "bert"])
def test_activation_importance_prunes_to_the_same_shapes_as_l1(case, request):
    fixture, head, spec, _ = CASES[case]
    model = request.getfixturevalue(fixture)
    batches = [{**inputs_for(case), "labels": torch.tensor([0, 1])}]
    by_activation = Pipeline.parse(f"{spec},importance=activation,n_batches=1").apply(
        copy.deepcopy(model), ctx(head, batches)
    )
    by_l1 = Pipeline.parse(spec).apply(model, ctx(head))
    assert [p.shape for p in by_activation.parameters()] == [p.shape for p in by_l1.parameters()]
    with torch.no_grad():
        assert torch.isfinite(by_activation(**inputs_for(case)).logits).all()


def test_lora_wraps_the_pruned_model(bert):
    pipeline = Pipeline.parse("channel:sparsity=0.5,heads=0.5+lora:r=2")
    model = pipeline.apply(bert, ctx(("classifier",), task_type="seq_cls"))
    query = model.base_model.model.bert.encoder.layer[0].attention.self.query
    assert (
        query.lora_A["default"].in_features == 32 and query.lora_B["default"].out_features == 16
    )  # one head of 16 left
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable) and not any("intermediate.dense.weight" in n for n in trainable)
    loss = model(**bert_inputs(), labels=torch.tensor([0, 1, 0])).loss
    loss.backward()
    assert query.lora_B["default"].weight.grad is not None


def test_compression_is_real_and_the_new_dense_size(net):
    dense = model_bytes(net)
    pipeline = Pipeline.parse("channel:sparsity=0.5")
    model = pipeline.finalize(pipeline.apply(net, ctx(RESNET_HEAD)))
    info = pipeline.compression(model)
    assert info.kernel == "real" and info.weight_bits is None
    assert info.compressed_bytes == model_bytes(model) < dense


def test_nothing_to_prune_is_a_one_line_error():
    plain = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(HarnessError, match="found nothing to prune in Sequential") as info:
        Pipeline.parse("channel").apply(plain, ctx())
    assert "\n" not in str(info.value)


def test_an_mlp_with_a_norm_inside_is_not_pruned():
    class NormedMLP(nn.Module):  # fc1 -> LayerNorm -> fc2: the norm mixes the neurons, so none may go
        def __init__(self):
            super().__init__()
            self.fc1, self.norm, self.fc2 = nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc2(self.norm(self.fc1(x)))

    assert find_groups(NormedMLP()) == []
    with pytest.raises(HarnessError, match="found nothing to prune in NormedMLP"):
        Pipeline.parse("channel").apply(NormedMLP(), ctx())


def test_heads_on_a_model_without_attention_is_a_one_line_error(net):
    with pytest.raises(HarnessError, match="heads=0.5 but CifarResNet has no attention") as info:
        Pipeline.parse("channel:heads=0.5").apply(net, ctx(RESNET_HEAD))
    assert "\n" not in str(info.value)


def test_activation_importance_needs_batches(net):
    with pytest.raises(HarnessError, match="needs training batches"):
        Pipeline.parse("channel:importance=activation").apply(net, ctx(RESNET_HEAD))


@pytest.mark.parametrize(
    "method, message",
    [
        ("channel:sparsity=1.0", r"sparsity=1\.0: Input should be less than 1"),
        ("channel:sparsity=-0.1", r"sparsity=-0\.1: Input should be greater than or equal to 0"),
        ("channel:heads=1", r"heads=1: Input should be less than 1"),
        ("channel:importance=taylor", r"importance='taylor'"),
        ("channel:heads=0.5", r"has no attention whose heads it can prune"),
        ("svd:rank=4,alpha=2", r"alpha=2: Input should be less than or equal to 1"),
        ("svd:rank=4,alpha=0.3", r"alpha only apply with activation_aware=true"),
    ],
)
def test_bad_input_through_the_cli_is_one_line_exit_2(tiny_ckpt, cifar_mirror, tmp_path, capsys, method, message):  # noqa: F811
    assert run_cifar(tiny_ckpt, cifar_mirror, tmp_path / "r", "--method", method) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err), err
    assert len(err.splitlines()) == 1 and err.startswith("harness: error: ")
    assert not (tmp_path / "r").exists() or not result_files(tmp_path / "r")


def test_cli_run_on_the_tiny_mirror(tiny_ckpt, cifar_mirror, tmp_path):  # noqa: F811
    assert run_cifar(tiny_ckpt, cifar_mirror, tmp_path / "r", "--method", "channel:sparsity=0.5") == 0
    row = read_results(tmp_path / "r").iloc[0]
    assert row["status"] == "ok" and row["trainable_params"] == 0
    net = resnet20()
    Pipeline.parse("channel:sparsity=0.5").apply(net, ctx(RESNET_HEAD))
    assert row["total_params"] == n_params(net) < resnet20_parameter_count()
    assert row["compression_kernel"] == "real" and row["compressed_model_bytes"] == row["model_bytes"]


# Activation-aware SVD (ASVD) -----------------------------------------------------------


@pytest.mark.parametrize(
    "layer, x",
    [
        (nn.Linear(12, 7), torch.randn(4, 12)),
        (nn.Conv2d(3, 5, 3, stride=2, padding=1), torch.randn(2, 3, 9, 9)),
    ],
)
def test_activation_aware_svd_at_full_rank_reproduces_the_layer(layer, x):
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    scale = torch.logspace(-2, 1, layer.weight[0].numel())[torch.randperm(layer.weight[0].numel())]
    with torch.no_grad():
        torch.testing.assert_close(factorise(layer, full, scale)(x), layer(x), atol=1e-4, rtol=1e-4)


class OneLayer(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


@pytest.mark.parametrize(
    "make_layer, shape, scales",
    [
        (lambda: nn.Linear(16, 12), (64, 16), torch.logspace(-2, 1, 16)),
        (lambda: nn.Conv2d(8, 8, 3, padding=1), (4, 8, 6, 6), torch.logspace(-2, 1, 8)[:, None, None]),
    ],
)
def test_activation_aware_truncation_has_lower_output_error_on_unequal_inputs(make_layer, shape, scales):
    torch.manual_seed(0)
    layer = make_layer()
    g = torch.Generator().manual_seed(1)
    calibration = [{"x": torch.randn(*shape, generator=g) * scales} for _ in range(2)]
    held_out = torch.randn(*shape, generator=g) * scales
    with torch.no_grad():
        exact = layer(held_out)
    errors = {}
    for spec in ("svd:rank=4", "svd:rank=4,activation_aware=true,n_batches=2"):
        model = Pipeline.parse(spec).apply(OneLayer(copy.deepcopy(layer)), ctx(batches=calibration))
        assert isinstance(model.layer, nn.Sequential)  # factorised
        with torch.no_grad():
            errors[spec] = (model(held_out) - exact).norm().item()
    plain, aware = errors.values()
    assert aware < 0.8 * plain, errors


def test_activation_aware_svd_needs_batches():
    with pytest.raises(HarnessError, match="needs training batches"):
        Pipeline.parse("svd:rank=2,activation_aware=true").apply(OneLayer(nn.Linear(8, 8)), ctx())


def test_conv_input_statistics_are_those_of_the_unfolded_patches():
    """Both calibrations sum over the batch before unfolding; brute force unfolds every image."""
    from harness.methods.structured_pruning import consumer_column_norms
    from harness.methods.svd import activation_scales

    conv = nn.Conv2d(2, 4, 3, padding=1, stride=2, bias=False)
    batches = [{"x": torch.randn(3, 2, 7, 7)}, {"x": torch.randn(2, 2, 7, 7)}]
    patches = torch.cat(
        [nn.functional.unfold(b["x"], 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 18) for b in batches]
    )
    norms = consumer_column_norms(OneLayer(conv), ["layer"], batches)["layer"]
    torch.testing.assert_close(norms, patches.norm(dim=0), rtol=1e-5, atol=1e-6)
    scales = activation_scales(OneLayer(conv), [("layer", conv)], batches, alpha=0.5)["layer"]
    torch.testing.assert_close(scales, patches.abs().mean(dim=0).sqrt(), rtol=1e-5, atol=1e-6)
