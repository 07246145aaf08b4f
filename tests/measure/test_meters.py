"""Meters measure what they claim: parameter and byte counts, optimizer state, peak memory, latency."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.measure.memory import PeakMemory, optimizer_state_bytes
from harness.measure.size import count_parameters, model_bytes, trainable_bytes
from harness.measure.timing import measure_latency


def test_counts_and_bytes_of_a_known_model():
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.LayerNorm(20), torch.nn.Linear(20, 3))
    model[0].weight.requires_grad = False
    total = 10 * 20 + 20 + 20 + 20 + 20 * 3 + 3
    assert count_parameters(model) == (total - 200, total)
    assert model_bytes(model) == total * 4
    assert trainable_bytes(model) == (total - 200) * 4


def test_tied_parameters_are_counted_once():
    emb = torch.nn.Embedding(50, 8)
    head = torch.nn.Linear(8, 50, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    assert count_parameters(model) == (400, 400) and model_bytes(model) == 1600


def test_adam_state_is_two_tensors_per_trained_parameter():
    model = torch.nn.Linear(16, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 16)).sum().backward()
    opt.step()
    assert optimizer_state_bytes(opt) == 2 * (16 * 4 + 4) * 4  # exp_avg and exp_avg_sq; the step scalar is not state


def _touched(n_bytes: int) -> torch.Tensor:
    return torch.ones(n_bytes // 4)  # float32 ones: every page written, so resident


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the peak can be reset only on Linux")
@pytest.mark.parametrize("ballast_mb", [0, 300])
def test_cpu_peak_memory_is_what_the_region_added(ballast_mb):
    held = _touched(ballast_mb * 2**20) if ballast_mb else None  # what the process held before
    with PeakMemory(torch.device("cpu")) as meter:
        block = _touched(200 * 2**20)
        del block
    del held
    assert meter.kind == "cpu_rss_added"
    assert meter.peak_bytes == meter.added_bytes
    assert meter.peak_bytes == pytest.approx(200 * 2**20, rel=0.05)
    assert meter.process_peak_bytes == meter.start_bytes + meter.peak_bytes
    assert meter.process_peak_bytes >= (200 + ballast_mb) * 2**20


def test_latency_percentiles_over_repeats():
    calls = []
    lat = measure_latency(lambda: calls.append(1), torch.device("cpu"), warmup=3, repeats=7)
    assert len(calls) == 10 and lat.repeats == 7
    assert 0 <= lat.p50_ms <= lat.p90_ms


def test_stored_parameter_count_includes_packed_quantized_weights():
    import warnings

    from harness.measure.size import stored_parameter_count

    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
    expected = 64 * 32 + 32 + 32 * 8 + 8
    assert stored_parameter_count(model) == expected
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    assert sum(p.numel() for p in quantized.parameters()) == 0  # packed: no longer nn.Parameters
    assert stored_parameter_count(quantized) == expected


def test_train_step_flops_count_forward_and_weight_gradient_and_leave_no_trace():
    from types import SimpleNamespace

    import torch

    from harness.measure.flops import train_step_flops

    class Regressor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(32, 16, bias=False)

        def forward(self, x, labels):
            return SimpleNamespace(loss=((self.linear(x) - labels) ** 2).mean())

    torch.manual_seed(0)
    model, batch = Regressor(), {"x": torch.randn(8, 32), "labels": torch.randn(8, 16)}
    flops = train_step_flops(model, batch, torch.device("cpu"), "fp32")
    assert flops == 2 * (2 * 8 * 32 * 16)  # forward x W^T, and the weight's gradient (the input needs none)
    assert model.linear.weight.grad is None
    state = torch.random.get_rng_state()
    train_step_flops(model, batch, torch.device("cpu"), "fp32")
    assert torch.equal(torch.random.get_rng_state(), state)


def test_mfu_is_achieved_flops_over_the_datasheet_peak():
    from harness.core.devices import mfu, peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert peak_tflops("Intel(R) Xeon(R) Processor", "fp32") is None
    assert mfu(1e13, 2.0, "NVIDIA A100-SXM4-80GB", "bf16") == pytest.approx(1e13 / 2.0 / 312e12)
    assert mfu(1e13, 2.0, "Intel(R) Xeon(R) Processor", "fp32") is None


# Dense TF32 tensor-core peaks, half the datasheets' "with sparsity" figures:
# A100 312*, H100 SXM5 989*, H100 PCIe 756*, H200 989*, L40S 366*; RTX 4090 82.6 (Ada whitepaper).
@pytest.mark.parametrize(
    "name, tf32",
    [
        ("NVIDIA A100-SXM4-80GB", 156.0),
        ("NVIDIA H100 80GB HBM3", 494.7),
        ("NVIDIA H100 PCIe", 378.0),
        ("NVIDIA H200", 494.7),
        ("NVIDIA L40S", 183.0),
        ("NVIDIA GeForce RTX 4090", 82.6),
    ],
)
def test_fp32_runs_with_tf32_kernels_are_compared_with_the_tf32_peak(name, tf32):
    from harness.core.devices import mfu, peak_tflops

    assert peak_tflops(name, "fp32", tf32=True) == tf32
    assert peak_tflops(name, "fp32", tf32=True) >= peak_tflops(name, "fp32")
    assert mfu(1e15, 10.0, name, "fp32", tf32=True) == pytest.approx(1e14 / (tf32 * 1e12))


def test_convolutions_run_tf32_in_fp32_under_cudnn_default(monkeypatch):
    from harness.core.devices import fp32_uses_tf32

    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    linear = torch.nn.Linear(4, 2)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default
    assert fp32_uses_tf32(conv) and not fp32_uses_tf32(linear)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert not fp32_uses_tf32(conv)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert fp32_uses_tf32(linear)


def test_memory_breakdown_splits_the_peak():
    import torch

    from harness.measure.memory import held_gradient_bytes, memory_breakdown

    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 2))
    model[0].requires_grad_(False)
    model(torch.randn(3, 10)).sum().backward()
    grads = held_gradient_bytes(list(model.parameters()))
    assert grads == 22 * 4  # only the second layer holds gradients
    mb = memory_breakdown(model, grads, optimizer_bytes=2 * 22 * 4, added_bytes=6_000)
    assert mb.parameter_bytes == (110 + 22) * 4 and mb.gradient_bytes == 22 * 4
    assert mb.activation_bytes == 6_000 - 22 * 4 - 2 * 22 * 4
    assert memory_breakdown(model, grads, None, None).activation_bytes is None
