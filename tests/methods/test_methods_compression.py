"""Quantization and low-rank compression: error bounds, exactness, sizes, and the row."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from harness.core.errors import HarnessError
from harness.methods.base import MethodContext
from harness.methods.pipeline import Pipeline
from harness.methods.quantization import SCALE_BITS, fake_quantize
from harness.methods.svd import factorise, rank_for_energy
from harness.results.store import read_results
from tests.support import run_cifar


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("group_size", [0, 16, 24])  # 24 leaves a shorter last group of 64 inputs
def test_quantize_dequantize_error_is_at_most_half_a_step(bits, group_size):
    torch.manual_seed(0)
    weight = torch.randn(6, 64) * torch.linspace(0.1, 3, 64)
    restored = fake_quantize(weight, bits, group_size)
    size = 64 if group_size == 0 else group_size
    for start in range(0, 64, size):
        block, back = weight[:, start : start + size], restored[:, start : start + size]
        step = (block.amax(1, keepdim=True) - block.amin(1, keepdim=True)) / (2**bits - 1)
        assert ((back - block).abs() <= step / 2 + 1e-6).all()
        for row in back:
            assert len(torch.unique(row)) <= 2**bits
    # fewer bits, larger error
    if bits < 8:
        assert (restored - weight).abs().mean() > (fake_quantize(weight, 8, group_size) - weight).abs().mean()


def test_convolution_weights_are_quantized_per_output_channel_over_their_inputs():
    weight = torch.randn(4, 3, 3, 3)
    restored = fake_quantize(weight, 4, 0)
    assert restored.shape == weight.shape
    for channel in range(4):
        assert len(torch.unique(restored[channel])) <= 16


def _linear_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    return model


@pytest.mark.parametrize(
    "spec, bits, group", [("int8", 8, 128), ("int4:group_size=16", 4, 16), ("int4:group_size=0", 4, 0)]
)
def test_weight_only_reports_effective_bits_and_stored_size(spec, bits, group):
    model = _linear_model()
    pipeline = Pipeline.parse(spec)
    model = pipeline.apply(model, MethodContext(task_type="image_cls", head_modules=("2",)))
    info = pipeline.compression(model)
    # only layer "0" (32 x 64) is quantized; the head "2" stays float
    groups = 32 * (1 if group == 0 else -(-64 // group))
    overhead = groups * (SCALE_BITS + bits)
    assert info.kernel == "simulated"
    assert info.weight_bits == pytest.approx(bits + overhead / (32 * 64))
    float_rest = (32 + 32 * 4 + 4) * 4  # bias of layer 0, the head's weight and bias
    assert info.compressed_bytes == float_rest + (32 * 64 * bits + overhead) // 8
    assert not any(p.requires_grad for p in model.parameters())  # compression alone trains nothing


def test_int8_dynamic_runs_a_real_quantized_kernel_close_to_float():
    model = _linear_model().eval()
    x = torch.randn(8, 64)
    with torch.no_grad():
        expected = model(x)
    pipeline = Pipeline.parse("int8-dynamic")
    quantized = pipeline.finalize(pipeline.apply(model, MethodContext(task_type="image_cls")))
    assert "quantized" in type(quantized[0]).__module__
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), expected, atol=0.05, rtol=0.05)
    info = pipeline.compression(quantized)
    assert info.kernel == "real" and info.weight_bits == 8.0
    # int8 weights, a float32 scale and an int32 zero point per tensor, and the float32 biases
    # (held in the quantized layers' packed params, not in model.parameters())
    assert info.compressed_bytes == (64 * 32 + 32 * 4) + 2 * 8 + (32 + 4) * 4


@pytest.mark.parametrize(
    "layer, x",
    [
        (torch.nn.Linear(12, 7), torch.randn(4, 12)),
        (torch.nn.Conv2d(3, 5, 3, stride=2, padding=1), torch.randn(2, 3, 9, 9)),
    ],
)
def test_svd_at_full_rank_reproduces_the_layer(layer, x):
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    with torch.no_grad():
        torch.testing.assert_close(factorise(layer, full)(x), layer(x), atol=1e-5, rtol=1e-5)


def test_truncated_svd_error_is_the_discarded_spectrum():
    """Eckart-Young: the rank-r truncation's Frobenius error is the norm of the dropped singular values."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(20, 10, bias=False)
    s = torch.linalg.svdvals(layer.weight.detach())
    low = factorise(layer, 3)
    product = low[1].weight @ low[0].weight
    error = torch.linalg.matrix_norm(product - layer.weight.detach())
    assert error.item() == pytest.approx(s[3:].square().sum().sqrt().item(), rel=1e-4)


def test_energy_picks_the_smallest_rank_that_keeps_it():
    layer = torch.nn.Linear(4, 4, bias=False)
    layer.weight.data = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5]))  # energies 9, 4, 1, 0.25 of 14.25
    assert rank_for_energy(layer, 9 / 14.25) == 1
    assert rank_for_energy(layer, 0.9) == 2  # 13/14.25 = 0.912
    assert rank_for_energy(layer, 0.95) == 3
    assert rank_for_energy(layer, 1.0) == 4


@pytest.mark.parametrize(
    "spec, why",
    [
        ("svd:rank=8", r"every layer's full rank is at most 8"),  # 8 >= min(out, in) of both layers
        ("svd:energy=1.0", r"keeping 1.0 of the spectrum makes no layer smaller"),
    ],
)
def test_svd_that_factorises_no_layer_is_an_error(spec, why):
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 8))
    with pytest.raises(HarnessError, match=rf"^method 'svd': no layer was factorised \({why}\); lower rank or energy$"):
        Pipeline.parse(spec).apply(model, MethodContext(task_type="image_cls"))


def test_svd_needs_exactly_one_of_rank_and_energy():
    for spec in ("svd", "svd:rank=4,energy=0.9"):
        with pytest.raises(HarnessError, match="exactly one of rank or energy"):
            Pipeline.parse(spec)


def test_cifar_rows_record_compression(tiny_ckpt, cifar_mirror, tmp_path):  # noqa: F811
    results = tmp_path / "results"
    for method in ("none", "int4:group_size=0", "svd:rank=4"):
        assert run_cifar(tiny_ckpt, cifar_mirror, results, "--method", method) == 0
    rows = read_results(results).set_index("method")
    assert pd.isna(rows.loc["none", "compression_kernel"]) and pd.isna(rows.loc["none", "weight_bits"])
    assert rows.loc["int4:group_size=0", "compression_kernel"] == "simulated"
    assert 4 < rows.loc["int4:group_size=0", "weight_bits"] < 5
    assert rows.loc["int4:group_size=0", "compressed_model_bytes"] < rows.loc["none", "model_bytes"] / 4
    assert rows.loc["svd:rank=4", "compression_kernel"] == "real"
    assert rows.loc["svd:rank=4", "model_bytes"] < rows.loc["none", "model_bytes"]
    assert (rows["trainable_params"] == 0).all()
