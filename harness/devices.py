"""Peak dense throughput of known accelerators, for model FLOP utilisation (MFU).

Numbers are NVIDIA's datasheet peaks without structured sparsity, in TFLOP/s: "tensor" is
the bf16/fp16 tensor-core peak (what autocast runs), "fp32" the plain FP32 peak (what a
float32 run uses: torch leaves TF32 matmuls off by default). A device not in the table has
no peak here, and its rows leave MFU empty rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DevicePeak:
    match: str  # a substring of torch.cuda.get_device_name()
    tensor_tflops: float
    fp32_tflops: float
    source: str


# Order matters: the first match wins (H100 PCIe before the SXM default).
DEVICE_PEAKS = (
    DevicePeak("H200", 989.4, 66.9, "NVIDIA H200 datasheet (SXM)"),
    DevicePeak("H100 PCIe", 756.0, 51.2, "NVIDIA H100 datasheet (PCIe)"),
    DevicePeak("H100", 989.4, 66.9, "NVIDIA H100 datasheet (SXM5)"),
    DevicePeak("A100", 312.0, 19.5, "NVIDIA A100 datasheet"),
    DevicePeak("L40S", 362.1, 91.6, "NVIDIA L40S datasheet"),
    DevicePeak("RTX 4090", 165.2, 82.6, "NVIDIA Ada GPU architecture whitepaper (FP16 tensor, FP32 accumulate)"),
)


def peak_tflops(device_name: str, precision: str) -> float | None:
    for peak in DEVICE_PEAKS:
        if peak.match in device_name:
            return peak.tensor_tflops if precision in ("bf16", "fp16") else peak.fp32_tflops
    return None


def mfu(flops_per_step: float | None, steps: int, seconds: float, device_name: str, precision: str) -> float | None:
    """Achieved FLOP/s of training over the device's peak: flops per step x steps / seconds / peak."""
    peak = peak_tflops(device_name, precision)
    if not peak or not flops_per_step or not seconds:
        return None
    return flops_per_step * steps / seconds / (peak * 1e12)
