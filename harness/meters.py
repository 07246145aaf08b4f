"""Meters: wall time, peak memory and latency, each honest about how it measured.

- Time on GPU is taken with CUDA events (or a synchronize around the timed region),
  never a bare wall clock around asynchronous kernel launches; on CPU,
  `time.perf_counter`.
- Peak memory on GPU is `max_memory_allocated` / `max_memory_reserved` after a reset.
  On CPU it is the process's peak resident set size; on Linux the peak is reset first
  (writing 5 to /proc/self/clear_refs resets VmHWM), elsewhere it is the peak since the
  process started. `kind` records which, so such numbers are never mixed unknowingly.
- Latency is a percentile over repeats after warm-up, never a single number.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


def device_of(model: torch.nn.Module) -> torch.device:
    """Where a model's parameters live (CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Stopwatch:
    """Context manager measuring seconds of (device) work; pause() excludes a region."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds = 0.0
        self._start: float | None = None

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds += time.perf_counter() - self._start
        self._start = None

    def pause(self) -> "_Paused":
        return _Paused(self)


class _Paused:
    def __init__(self, watch: Stopwatch):
        self.watch = watch

    def __enter__(self):
        synchronize(self.watch.device)
        self.watch.seconds += time.perf_counter() - self.watch._start

    def __exit__(self, *exc):
        synchronize(self.watch.device)
        self.watch._start = time.perf_counter()


def _read_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _read_vm_hwm() -> int | None:
    return _read_status("VmHWM")


def _reset_vm_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux


class PeakMemory:
    """Context manager: peak memory of the enclosed region (see module doc for `kind`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self.reserved_bytes: int | None = None
        # Memory in use when the region starts (allocated on CUDA, resident on CPU): the model,
        # and on CPU the process's libraries. Peak minus it is what the region itself added.
        self.start_bytes: int | None = None
        self.kind = ""

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = int(torch.cuda.memory_allocated(self.device))
            self.kind = "cuda_max_allocated"
            return self
        self.start_bytes = _read_status("VmRSS")
        if _reset_vm_hwm() and _read_vm_hwm() is not None:
            self.kind = "cpu_peak_rss_reset"
        else:
            self.kind = "cpu_peak_rss_process"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            self.reserved_bytes = int(torch.cuda.max_memory_reserved(self.device))
        elif self.kind == "cpu_peak_rss_reset":
            self.peak_bytes = _read_vm_hwm()
        else:
            self.peak_bytes = _ru_maxrss_bytes()


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int


def measure_latency(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Latency:
    """Call `fn` `warmup` times untimed, then time `repeats` calls one by one."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times_ms = []
    if device.type == "cuda":
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times_ms.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times_ms.append((time.perf_counter() - t0) * 1e3)
    arr = np.asarray(times_ms)
    return Latency(float(np.percentile(arr, 50)), float(np.percentile(arr, 90)), float(arr.mean()), repeats)


@dataclass(frozen=True)
class MemoryBreakdown:
    """Where training memory went: weights, their gradients, optimizer state, and activations.

    Gradients are one per trainable parameter in its dtype; activations (and temporaries)
    are the peak minus what was in use when training started minus gradients and optimizer
    state, an estimate that is exact on CUDA (allocated bytes) and on CPU also absorbs the
    allocator's slack."""

    parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    activation_bytes: int | None


def memory_breakdown(model: torch.nn.Module, trainable_params: list[torch.nn.Parameter], optimizer_bytes: int | None,
                     peak_bytes: int | None, start_bytes: int | None) -> MemoryBreakdown:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.numel() * p.element_size() for p in trainable_params)
    optim = optimizer_bytes or 0
    activations = None
    if peak_bytes is not None and start_bytes is not None:
        activations = max(0, peak_bytes - start_bytes - grads - optim)
    return MemoryBreakdown(params, grads, optim, activations)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; `parameters()` yields a shared (tied) tensor once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def stored_parameter_count(model: torch.nn.Module) -> int:
    """Parameters of the final model, counting the packed weights (and biases) of torch's
    quantized modules too: they are not `nn.Parameter`s, but they are what the model stores."""
    _, total = count_parameters(model)
    for module in model.modules():
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            total += module.weight().numel() + (bias.numel() if bias is not None else 0)
    return total


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers as they sit in memory (shared tensors once)."""
    seen: set[int] = set()
    size = 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        size += tensor.numel() * tensor.element_size()
    return size


def trainable_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps per parameter, found in nested state too
    (e.g. a low-rank projector object holding its projection matrix)."""
    seen: set[int] = set()

    def walk(obj, depth: int = 0) -> int:
        if depth > 4:
            return 0
        if torch.is_tensor(obj):
            if obj.dim() == 0 or obj.data_ptr() in seen:  # scalars are bookkeeping (step counts)
                return 0
            seen.add(obj.data_ptr())
            return obj.numel() * obj.element_size()
        if isinstance(obj, dict):
            return sum(walk(v, depth + 1) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(v, depth + 1) for v in obj)
        if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
            return sum(walk(v, depth + 1) for v in vars(obj).values())
        return 0

    return sum(walk(state) for state in optimizer.state.values())


def weight_sparsity(model: torch.nn.Module) -> float | None:
    """Share of exactly-zero entries in the weights of linear and convolution layers."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            weight = module.weight
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else None


def _quantized_linear_flops(input_shape, packed_weight, *args, out_shape=None, **kwargs) -> int:
    # torch's dynamic int8 linear: (..., in) x (in, out), one multiply-add per pair, as aten.mm counts.
    return 2 * math.prod(input_shape[:-1]) * input_shape[-1] * out_shape[-1]


def train_step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, precision: str) -> int:
    """Operations of one forward and backward pass on `batch` (the optimizer's update is not
    counted), by FlopCounterMode. The random state is restored and the gradients cleared,
    so training afterwards is exactly what it would have been."""
    from torch.utils.flop_counter import FlopCounterMode

    from harness.train import loss_backward, untraced_backward

    with untraced_backward(model, device), FlopCounterMode(display=False) as counter:
        loss_backward(model, batch, device, precision)
    return int(counter.get_total_flops())


def forward_flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor], device: torch.device, precision: str) -> int:
    """Floating-point (or integer) operations of one forward pass on `inputs`, counted by
    torch's FlopCounterMode from the operators that actually run (matmuls, convolutions,
    attention): a model made smaller (SVD, channel pruning, token merging) counts less; a
    masked sparse model run by dense kernels counts the same as the dense model."""
    from torch.utils.flop_counter import FlopCounterMode

    from harness.train import autocast

    mapping = {}
    if hasattr(torch.ops, "quantized") and hasattr(torch.ops.quantized, "linear_dynamic"):
        mapping[torch.ops.quantized.linear_dynamic] = _quantized_linear_flops
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.inference_mode():
            with autocast(device, precision):
                model(**inputs)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
