"""NF4 (QLoRA) and GPTQ: the NF4 levels and block structure, bit-exactness against
bitsandbytes, stored sizes, QLoRA training on frozen NF4 weights; GPTQ against
round-to-nearest, its grids, its calibration; bad input on the command line."""

from __future__ import annotations

import logging
import re
import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.cli import main
from harness.methods.base import MethodContext
from harness.methods.compress import compressible_layers, dense_bytes_except
from harness.methods.gptq import collect_hessians, gptq_quantize
from harness.methods.nf4 import (
    ABSMAX_BLOCK_SIZE,
    BLOCK_SIZE,
    NF4_LEVELS,
    fake_quantize_nf4,
    nf4_bits,
    quantize_nf4,
    to_linear4bit,
)
from harness.methods.pipeline import Pipeline
from harness.methods.quantization import fake_quantize, round_to_grid
from harness.results.store import read_results, result_files
from tests.support import loss_before_after

LEVELS = torch.tensor(NF4_LEVELS)


def blocks_of(tensor: torch.Tensor, size: int = BLOCK_SIZE) -> torch.Tensor:
    flat = tensor.reshape(-1).float()
    return F.pad(flat, (0, -flat.numel() % size)).reshape(-1, size)


# NF4 -----------------------------------------------------------------------------------


def test_nf4_levels_are_qlora_normal_quantiles():
    """QLoRA's construction (appendix E; bitsandbytes' create_normal_map): 8 positive and 7
    negative quantiles of N(0, 1) from offset 0.9677083 to 0.5, an exact zero, scaled to [-1, 1]."""
    from scipy.stats import norm

    offset = 0.9677083
    positive = norm.ppf(torch.linspace(offset, 0.5, 9)[:-1].numpy()).tolist()
    negative = (-norm.ppf(torch.linspace(offset, 0.5, 8)[:-1].numpy())).tolist()
    values = torch.tensor(sorted(positive + [0.0] + negative))
    values /= values.max()
    assert len(NF4_LEVELS) == 16 and list(NF4_LEVELS) == sorted(NF4_LEVELS)
    assert NF4_LEVELS[0] == -1.0 and NF4_LEVELS[7] == 0.0 and NF4_LEVELS[15] == 1.0
    torch.testing.assert_close(LEVELS, values.float(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(33, 70), (4, 3, 3, 3)])  # 2310 and 108 weights: a last, shorter block
def test_every_nf4_weight_is_the_nearest_level_times_its_block_absmax(shape):
    torch.manual_seed(0)
    weight = torch.randn(shape) * torch.linspace(0.1, 2, shape[-1])
    restored = blocks_of(fake_quantize_nf4(weight, double_quant=False))
    original = blocks_of(weight)
    absmax = original.abs().amax(dim=1, keepdim=True)
    ratio = restored / absmax
    nearest = LEVELS[(ratio.unsqueeze(-1) - LEVELS).abs().argmin(-1)]
    assert (ratio - nearest).abs().max() < 1e-6  # a level times the block's absmax
    chosen_gap = (original / absmax - ratio).abs()
    assert (
        chosen_gap <= (original / absmax).unsqueeze(-1).sub(LEVELS).abs().amin(-1) + 1e-6
    ).all()  # the nearest level
    half_gap = (LEVELS[1:] - LEVELS[:-1]).max() / 2
    assert ((restored - original).abs() <= half_gap * absmax + 1e-6).all()


def test_double_quantization_keeps_each_absmax_close_and_the_levels():
    torch.manual_seed(0)
    weight = torch.randn(300, 200) * torch.linspace(0.1, 2, 200)  # 938 blocks: 4 absmax blocks of 256
    index, absmax = quantize_nf4(weight, double_quant=True)
    true_absmax = blocks_of(weight).abs().amax(dim=1)
    deviation = (true_absmax - true_absmax.mean()).abs().max()
    # 8-bit dynamic code: at most about 0.8% of the largest deviation from the mean (its top decade's step / 2)
    assert ((absmax - true_absmax).abs() <= 0.008 * deviation).all()
    restored = blocks_of(fake_quantize_nf4(weight, double_quant=True))
    torch.testing.assert_close(restored, LEVELS[index] * absmax.unsqueeze(1), atol=0, rtol=0)
    half_gap = (LEVELS[1:] - LEVELS[:-1]).max() / 2
    error_bound = half_gap * true_absmax + (absmax - true_absmax).abs()
    assert ((restored - blocks_of(weight)).abs() <= error_bound.unsqueeze(1) + 1e-5).all()


@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(64, 64), (33, 70), (512, 300)])  # one block; a shorter last block; 2400 blocks
def test_nf4_is_what_bitsandbytes_computes(double_quant, dtype, shape):
    """Bit for bit against bitsandbytes' quantize_4bit/dequantize_4bit on CPU tensors. Its
    compiled CPU 8-bit quantizer rounds near-ties of the double quantization either way, so
    that step is checked against bitsandbytes' PyTorch backend (which its CUDA kernels match)."""
    pytest.importorskip("bitsandbytes")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # "kernels package missing": not our concern
    import bitsandbytes.functional as bnb

    torch.manual_seed(1)
    weight = (torch.randn(shape) * torch.rand(shape[-1]) * 3).to(dtype)
    packed, state = bnb.quantize_4bit(weight, blocksize=BLOCK_SIZE, quant_type="nf4", compress_statistics=False)
    if double_quant:
        pytorch_backend = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)
        code = bnb.create_dynamic_map()
        offset = state.absmax.mean()
        codes, scales = torch.ops.bitsandbytes.quantize_blockwise.default.redispatch(
            pytorch_backend, state.absmax - offset, code, ABSMAX_BLOCK_SIZE
        )
        state.absmax = bnb.dequantize_blockwise(codes, absmax=scales, code=code, blocksize=ABSMAX_BLOCK_SIZE) + offset
    expected = bnb.dequantize_4bit(packed, state)
    assert torch.equal(fake_quantize_nf4(weight, double_quant), expected)


@pytest.mark.parametrize("double_quant", [False, True])
def test_the_real_linear4bit_layer_computes_with_the_simulated_weights(double_quant):
    """The CUDA path's bitsandbytes Linear4bit (runnable on CPU too) holds the same weights."""
    pytest.importorskip("bitsandbytes")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    torch.manual_seed(0)
    layer = nn.Linear(70, 33)
    quantized = to_linear4bit(layer, double_quant)
    x = torch.randn(5, 70)
    with torch.no_grad():
        expected = F.linear(x, fake_quantize_nf4(layer.weight, double_quant), layer.bias)
        torch.testing.assert_close(quantized(x), expected, atol=1e-6, rtol=1e-6)
    assert not quantized.weight.requires_grad and quantized.weight.dtype == torch.uint8


def small_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc=nn.Linear(64, 32), act=nn.ReLU(), head=nn.Linear(32, 4)))


def test_the_bitsandbytes_path_replaces_linears_and_reports_a_real_kernel(monkeypatch):
    """What `nf4` does on CUDA, run on CPU: Linear4bit layers with the simulated path's
    outputs and sizes, and QLoRA through peft's 4-bit LoRA layers, merged back into 4 bits."""
    pytest.importorskip("bitsandbytes")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    import bitsandbytes as bnb

    context = MethodContext(task_type="image_cls", head_modules=("head",), total_steps=3, lr=1e-2)
    simulated = Pipeline.parse("nf4")
    simulated_model = simulated.apply(small_mlp(), context)
    monkeypatch.setattr("harness.methods.nf4.runs_bitsandbytes_kernel", lambda layer: isinstance(layer, nn.Linear))
    real = Pipeline.parse("nf4")
    real_model = real.apply(small_mlp(), context)
    assert isinstance(real_model.fc, bnb.nn.Linear4bit) and type(real_model.head) is nn.Linear  # the head stays float
    x = torch.randn(6, 64)
    with torch.no_grad():
        torch.testing.assert_close(real_model(x), simulated_model(x), atol=1e-6, rtol=1e-6)
    real_info, simulated_info = real.compression(real_model), simulated.compression(simulated_model)
    assert real_info.kernel == "real" and simulated_info.kernel == "simulated"
    assert (real_info.weight_bits, real_info.compressed_bytes) == (
        simulated_info.weight_bits,
        simulated_info.compressed_bytes,
    )

    qlora = Pipeline.parse("nf4+lora:r=4,target_modules=[fc],merge=true")
    wrapped = qlora.apply(small_mlp(), context)
    assert "lora.bnb" in type(wrapped.base_model.model.fc).__module__  # peft's 4-bit LoRA layer
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: merging into 4 bits rounds
        base = wrapped(x)
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_()  # as if trained
        adapted = wrapped(x)
        merged = qlora.finalize(wrapped)
        assert isinstance(merged.fc, bnb.nn.Linear4bit)  # merged, then quantized to NF4 again
        # the update survives the merge; only its NF4 rounding is lost (measured: 0.30 against 2.37)
        assert (merged(x) - adapted).abs().max() < 0.25 * (adapted - base).abs().max()
    assert qlora.compression(merged).kernel == "real"


def test_nf4_bits_per_weight():
    n = BLOCK_SIZE * ABSMAX_BLOCK_SIZE * 64  # a 1M-weight tensor
    assert nf4_bits(n, double_quant=False) / n == 4.5  # 4 + 32/64
    assert nf4_bits(n, double_quant=True) / n == 4 + 8 / 64 + 32 / (64 * 256) + 32 / n  # + the absmax mean
    assert round(nf4_bits(n, double_quant=True) / n, 3) == 4.127  # QLoRA's figure
    assert nf4_bits(65, double_quant=False) == 33 * 8 + 2 * 32  # 65 codes in 33 bytes, 2 blocks


@pytest.mark.parametrize("spec, double_quant", [("nf4", True), ("nf4:double_quant=false", False)])
def test_nf4_reports_bits_and_stored_size(spec, double_quant):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    original = model[0].weight.detach().clone()
    pipeline = Pipeline.parse(spec)
    pipeline.apply(model, MethodContext(task_type="image_cls", head_modules=("2",)))
    assert torch.equal(model[0].weight, fake_quantize_nf4(original, double_quant))
    info = pipeline.compression(model)
    bits = nf4_bits(32 * 64, double_quant)
    assert info.kernel == "simulated" and info.weight_bits == bits / (32 * 64)
    assert info.compressed_bytes == (32 + 32 * 4 + 4) * 4 + bits // 8  # layer 0's bias and the head stay float32
    assert not any(p.requires_grad for p in model.parameters())


def test_qlora_trains_lora_on_frozen_nf4_weights(model, train_data):
    context = MethodContext(task_type="seq_cls", head_modules=("classifier",), total_steps=15, lr=1e-2, seed=0)
    layers = compressible_layers(model, context.head_modules)
    expected = {name: fake_quantize_nf4(layer.weight) for name, layer in layers}
    before, after = loss_before_after(Pipeline.parse("nf4+lora:r=4"), model, context, train_data, steps=15)
    assert after < before * 0.9, (before, after)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]  # peft wrapped the model in place
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b)  # LoRA itself trained (it starts at B = 0)
    for name, layer in layers:  # peft keeps each layer object as its base layer
        assert torch.equal(layer.weight, expected[name]), name
        assert not layer.weight.requires_grad


# GPTQ ----------------------------------------------------------------------------------


def correlated_inputs(features: int, n: int, seed: int = 0) -> torch.Tensor:
    """(features, n): a few strong shared directions plus mixed noise, as layer activations are."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(n, 8, generator=g) @ torch.randn(8, features, generator=g) * 2
    mixed = torch.randn(n, features, generator=g) @ (
        torch.eye(features) + 0.1 * torch.randn(features, features, generator=g)
    )
    return (shared + mixed).T


@pytest.mark.parametrize("bits, group_size", [(4, 0), (4, 32), (3, 100), (8, 128)])
def test_gptq_with_uncorrelated_inputs_is_round_to_nearest(bits, group_size):
    """H = I: no error is passed on, so GPTQ reduces to the same grid's round-to-nearest."""
    torch.manual_seed(0)
    weight = torch.randn(16, 256)
    assert torch.equal(
        gptq_quantize(weight, torch.eye(256), bits, group_size).values, fake_quantize(weight, bits, group_size)
    )


@pytest.mark.parametrize("bits, group_size", [(4, 0), (4, 32), (3, 128), (2, 64)])
def test_gptq_output_error_is_well_below_round_to_nearest(bits, group_size):
    torch.manual_seed(0)
    weight = torch.randn(64, 256)
    x = correlated_inputs(256, 2048)
    gptq = gptq_quantize(weight, 2 * x @ x.T / x.shape[1], bits, group_size).values
    error = torch.linalg.norm(weight @ x - gptq @ x).item()
    rtn_error = torch.linalg.norm(weight @ x - fake_quantize(weight, bits, group_size) @ x).item()
    assert error < 0.5 * rtn_error, (error, rtn_error)  # measured: 0.29 to 0.33 of it


@pytest.mark.parametrize("bits, group_size", [(2, 32), (3, 0), (4, 48)])  # 48: a last, shorter group of 4
def test_every_gptq_weight_lies_on_its_group_grid(bits, group_size):
    torch.manual_seed(0)
    weight = torch.randn(8, 100)
    x = correlated_inputs(100, 512)
    hessian = 2 * x @ x.T / x.shape[1]
    hessian[7, :] = hessian[:, 7] = 0  # an input that never varied in calibration
    values, step, zero = gptq_quantize(weight, hessian, bits, group_size)
    size = 100 if group_size == 0 else group_size
    column_group = torch.arange(100) // size
    codes = values / step[:, column_group] + zero[:, column_group]
    assert torch.isfinite(values).all()
    assert (codes - codes.round()).abs().max() < 1e-3
    assert codes.round().min() >= 0 and codes.round().max() <= 2**bits - 1
    assert (zero == zero.round()).all()
    g = 7 // size  # the silent input keeps its weights, rounded to nearest on its group's grid
    assert torch.equal(
        values[:, 7], round_to_grid(weight[:, 7:8], step[:, g : g + 1], zero[:, g : g + 1], 2**bits - 1)[:, 0]
    )


class TokenModel(nn.Module):
    """Takes a batch as the harness passes it: features, an attention mask, no labels."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x, attention_mask):
        return self.fc(x)


def test_gptq_calibrates_on_the_real_tokens_only():
    torch.manual_seed(0)
    model = TokenModel()
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batches = [{"x": torch.randn(2, 4, 6), "attention_mask": mask, "labels": torch.tensor([0, 1])} for _ in range(3)]
    hessians = collect_hessians(model, [("fc", model.fc)], iter(batches))
    tokens = torch.cat([b["x"][mask.bool()] for b in batches])  # 15 real tokens of 24
    torch.testing.assert_close(hessians["fc"], 2 * tokens.T @ tokens / 15)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, pixel_values):
        h = F.relu(self.grouped(F.relu(self.conv(pixel_values))))
        return self.head(F.relu(self.fc(h.flatten(1))))


def smooth_images(n: int, seed: int) -> torch.Tensor:
    """Upsampled noise: neighbouring pixels, hence patch entries, are correlated."""
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.randn(n, 3, 3, 3, generator=g), size=(8, 8), mode="bilinear", align_corners=False)


def test_gptq_method_beats_round_to_nearest_on_every_conv_and_linear_layer():
    torch.manual_seed(0)
    model = ConvNet().eval()
    batches = [
        {"pixel_values": smooth_images(16, seed), "labels": torch.zeros(16, dtype=torch.long)} for seed in range(4)
    ]
    inputs = {}
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, n=n: inputs.setdefault(n, []).append(args[0]))
        for n, m in model.named_children()
    ]
    with torch.no_grad():
        for b in batches:
            model(b["pixel_values"])
    for h in hooks:
        h.remove()
    original = {n: m.weight.detach().clone() for n, m in model.named_children()}
    context = MethodContext(task_type="image_cls", head_modules=("head",), sample_batches=lambda n: iter(batches[:n]))
    pipeline = Pipeline.parse("gptq:bits=3,group_size=0,calibration_batches=4")
    pipeline.apply(model, context)
    assert torch.equal(model.head.weight, original["head"])  # the head stays float
    assert not any(p.requires_grad for p in model.parameters())
    for name in ("conv", "grouped", "fc"):
        layer = getattr(model, name)
        x = torch.cat(inputs[name])
        errors = {}
        for label, w in (("gptq", layer.weight), ("rtn", fake_quantize(original[name], 3, 0))):
            with torch.no_grad():
                errors[label] = torch.linalg.norm(
                    layer._conv_forward(x, original[name] - w, None)
                    if isinstance(layer, nn.Conv2d)
                    else F.linear(x, original[name] - w)
                ).item()
        assert errors["gptq"] < errors["rtn"], (name, errors)
    info = pipeline.compression(model)
    # group_size=0: per output row a float16 scale and a 3-bit zero point; conv (8, 3, 3, 3),
    # grouped (8, 4, 3, 3), fc (16, 128) are quantized; their biases and the head stay float32
    n_weights, rows = 8 * 3 * 3 * 3 + 8 * 4 * 3 * 3 + 16 * 128, 8 + 8 + 16
    assert info.weight_bits == 3 + rows * (16 + 3) / n_weights
    float_rest = (8 + 8 + 16 + 16 * 4 + 4) * 4
    assert float_rest == dense_bytes_except(model, compressible_layers(model, ("head",)))
    assert info.compressed_bytes == float_rest + (n_weights * 3 + rows * (16 + 3)) // 8
    assert info.kernel == "simulated"


def test_a_gptq_then_lora_run_calibrates_on_training_batches_and_records_the_format(tiny_model, tiny_glue, results_dir):
    from tests.support import tiny_run_args

    spec = "gptq:bits=3,group_size=16,calibration_batches=2+lora:r=4"
    assert main(tiny_run_args(tiny_model, tiny_glue, results_dir, "--method", spec)) == 0
    row = read_results(results_dir).iloc[0]
    assert row["status"] == "ok" and row["trainable_params"] > 0
    assert row["weight_bits"] == 3 + (16 + 3) / 16  # a float16 scale and a 3-bit zero point per 16 weights
    assert row["compression_kernel"] == "simulated" and row["compressed_model_bytes"] < row["model_bytes"] / 2


# Bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gptq:bits=5", r"bits=5: Input should be 2, 3, 4 or 8"),
        ("gptq:group_size=-8", r"group_size=-8: Input should be greater than or equal to 0"),
        ("gptq:damp=0", r"damp=0: Input should be greater than 0"),
        ("gptq:calibration_batches=0", r"calibration_batches=0: Input should be greater than or equal to 1"),
        ("int4:bits=3", r"unknown parameter 'bits' \(valid: group_size\)"),
        ("int8:group_size=-1", r"group_size=-1: Input should be greater than or equal to 0"),
        ("int4:group_size=many", r"group_size='many': Input should be a valid integer"),
        ("nf4:double_quant=maybe", r"double_quant='maybe': Input should be a valid boolean"),
        ("nf4:blocksize=32", r"unknown parameter 'blocksize' \(valid: double_quant\)"),
    ],
)
def test_bad_quantization_parameters_are_one_line_exit_2(tiny_model, tiny_glue, results_dir, capsys, spec, message):
    args = [
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
        str(results_dir),
        "--quiet",
        "--method",
        spec,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err), err
    assert len(err.splitlines()) == 1 and err.startswith("harness: error: ")
    assert not results_dir.exists() or not result_files(results_dir)
