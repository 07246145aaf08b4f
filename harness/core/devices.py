"""Peak dense throughput of known accelerators, for model FLOP utilisation (MFU).

Numbers are NVIDIA's datasheet peaks without structured sparsity (half the starred
"with sparsity" figures), in TFLOP/s: "tensor" is the bf16/fp16 tensor-core peak (what
autocast runs), "tf32" the TF32 tensor-core peak, "fp32" the plain FP32 peak. A float32 run
uses TF32 where torch allows it: convolutions by default (`torch.backends.cudnn.allow_tf32`
is on unless turned off), matmuls only when `torch.backends.cuda.matmul.allow_tf32` is set;
such a run is compared with the TF32 peak, the fastest unit its kernels may use, so its MFU
cannot pass 1. A device not in the table has no peak here, and its rows leave MFU empty
rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePeak:
    match: str  # a substring of torch.cuda.get_device_name()
    tensor_tflops: float
    tf32_tflops: float
    fp32_tflops: float
    source: str


# Order matters: the first match wins (H100 PCIe before the SXM default).
DEVICE_PEAKS = (
    DevicePeak("H200", 989.4, 494.7, 66.9, "NVIDIA H200 datasheet (SXM)"),
    DevicePeak("H100 PCIe", 756.0, 378.0, 51.2, "NVIDIA H100 datasheet (PCIe)"),
    DevicePeak("H100", 989.4, 494.7, 66.9, "NVIDIA H100 datasheet (SXM5)"),
    DevicePeak("A100", 312.0, 156.0, 19.5, "NVIDIA A100 datasheet"),
    DevicePeak("L40S", 362.1, 183.0, 91.6, "NVIDIA L40S datasheet"),
    DevicePeak("RTX 4090", 165.2, 82.6, 82.6, "NVIDIA Ada GPU architecture whitepaper (FP16 tensor, FP32 accumulate)"),
)


def fp32_uses_tf32(model: torch.nn.Module) -> bool:
    """Whether a float32 run of `model` on CUDA may run TF32 tensor-core math: its convolutions
    under cuDNN's TF32 setting, or any matmul under the matmul setting."""
    convolutions = any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
    return bool(torch.backends.cuda.matmul.allow_tf32 or (convolutions and torch.backends.cudnn.allow_tf32))


def peak_tflops(device_name: str, precision: str, tf32: bool = False) -> float | None:
    for peak in DEVICE_PEAKS:
        if peak.match in device_name:
            if precision in ("bf16", "fp16"):
                return peak.tensor_tflops
            return peak.tf32_tflops if tf32 else peak.fp32_tflops
    return None


def mfu(
    train_flops: float | None, seconds: float, device_name: str, precision: str, tf32: bool = False
) -> float | None:
    """Achieved FLOP/s of training over the device's peak: the FLOPs of the steps that ran
    (executed FLOPs, harness/measure/train_flops.py) / seconds / peak."""
    peak = peak_tflops(device_name, precision, tf32)
    if not peak or not train_flops or not seconds:
        return None
    return train_flops / seconds / (peak * 1e12)
