"""Meters: wall time, peak memory and latency, each honest about how it measured.

- Time on GPU is taken with CUDA events (or a synchronize around the timed region),
  never a bare wall clock around asynchronous kernel launches; on CPU,
  `time.perf_counter`.
- Peak memory on GPU is `max_memory_allocated` / `max_memory_reserved` after a reset.
  On CPU the primary figure is what the region added: its peak resident set size minus the
  resident set when it started (libraries, datasets and the model already loaded are not
  the region's); the process's own peak is kept beside it. On Linux the peak is reset at
  the start (writing 5 to /proc/self/clear_refs resets VmHWM); elsewhere only the peak
  since the process started is known, so the added figure is an upper bound. `kind`
  records which, so such numbers are never mixed unknowingly.
- Latency is a percentile over repeats after warm-up, never a single number.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch

from harness.measure.flops import flop_counter
from harness.measure.passes import autocast, loss_backward, unchanged, untraced_backward


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
    """Context manager: peak memory of the enclosed region (see module doc for `kind`).

    `peak_bytes` is the primary figure (CUDA: peak allocated; CPU: peak resident set added
    above the start), `added_bytes` what the region added on either device, and
    `process_peak_bytes` the CPU process's whole peak resident set (null on CUDA)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self.reserved_bytes: int | None = None
        self.process_peak_bytes: int | None = None
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
        # Reset first, then read: VmHWM restarts from the resident set read here.
        reset = _reset_vm_hwm() and _read_vm_hwm() is not None
        self.start_bytes = _read_status("VmRSS")
        self.kind = "cpu_rss_added" if reset and self.start_bytes is not None else "cpu_rss_added_upper_bound"
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            self.reserved_bytes = int(torch.cuda.max_memory_reserved(self.device))
            return
        self.process_peak_bytes = _read_vm_hwm() if self.kind == "cpu_rss_added" else _ru_maxrss_bytes()
        if self.process_peak_bytes is not None and self.start_bytes is not None:
            self.peak_bytes = max(0, self.process_peak_bytes - self.start_bytes)

    @property
    def added_bytes(self) -> int | None:
        """Peak bytes the region added above what was in use when it started."""
        if self.device.type == "cuda":
            return None if self.peak_bytes is None else self.peak_bytes - (self.start_bytes or 0)
        return self.peak_bytes


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

    Gradients are those actually held (the most held at once, at the end of a step's
    backward passes): a method that trains a few layers at a time (LISA) holds only theirs.
    Activations (and temporaries) are what training added above its start minus gradients
    and optimizer state, an estimate that is exact on CUDA (allocated bytes) and on CPU also
    absorbs the allocator's slack."""

    parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    activation_bytes: int | None


def held_gradient_bytes(params: list[torch.nn.Parameter]) -> int:
    """Bytes of the gradients the parameters hold now."""
    return sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)


def memory_breakdown(
    model: torch.nn.Module, gradient_bytes: int, optimizer_bytes: int | None, added_bytes: int | None
) -> MemoryBreakdown:
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    optim = optimizer_bytes or 0
    activations = None if added_bytes is None else max(0, added_bytes - gradient_bytes - optim)
    return MemoryBreakdown(params, gradient_bytes, optim, activations)


def parameter_numel(param: torch.Tensor) -> int:
    """The weights a parameter stands for: a bitsandbytes 4-bit `Params4bit` packs two codes
    per uint8 element into shape (n/2, 1) and keeps the weight's true shape in its
    `quant_state`; every other tensor is its own numel."""
    state = getattr(param, "quant_state", None)
    if state is not None and not param.is_floating_point() and getattr(state, "shape", None) is not None:
        return int(torch.Size(state.shape).numel())
    return param.numel()


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; `parameters()` yields a shared (tied) tensor once. A
    packed 4-bit weight counts the weights it holds, not its bytes."""
    params = list(model.parameters())
    return sum(parameter_numel(p) for p in params if p.requires_grad), sum(parameter_numel(p) for p in params)


def stored_parameter_count(model: torch.nn.Module) -> int:
    """Parameters of the final model, counting the packed weights (and biases) of torch's
    quantized modules too: they are not `nn.Parameter`s, but they are what the model stores."""
    _, total = count_parameters(model)
    for module in model.modules():
        if hasattr(module, "_packed_params") and callable(getattr(module, "weight", None)):
            bias = module.bias() if callable(getattr(module, "bias", None)) else None
            total += module.weight().numel() + (bias.numel() if bias is not None else 0)
    return total


def _tensors(value):
    """The tensors in a state-dict value (torch's packed quantized params are a tuple)."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _unique_bytes(tensors) -> int:
    seen: set[tuple[int, int]] = set()
    size = 0
    for tensor in tensors:
        if tensor.numel() == 0:
            continue
        key = (tensor.data_ptr(), tensor.numel())  # a tied (shared) tensor once
        if key in seen:
            continue
        seen.add(key)
        size += tensor.numel() * tensor.element_size()
    return size


def model_bytes(model: torch.nn.Module, without_weights_of: Iterable[torch.nn.Module] = ()) -> int:
    """Bytes a checkpoint of the model holds: its `state_dict`, i.e. parameters, persistent
    buffers (batch-norm statistics) and what quantized modules store in their place (torch's
    packed int8 weights with scales and zero points, a bitsandbytes weight's packed codes and
    quantization state), shared tensors once. Non-persistent buffers (NOLA's bases, drawn
    again from a seed) are not stored, so they are not counted (see `model_memory_bytes`).

    `without_weights_of`: modules whose weight (and its quantization state) is left out, for a
    compression step that prices those weights in its own format."""
    skip = {id(m) for m in without_weights_of}
    prefixes = [f"{name}." if name else "" for name, m in model.named_modules(remove_duplicate=False) if id(m) in skip]

    def kept(key: str) -> bool:
        return not any(key == p + "weight" or key.startswith(p + "weight.") for p in prefixes)

    state = model.state_dict(keep_vars=True)
    return _unique_bytes(t for key, value in state.items() if kept(key) for t in _tensors(value))


def model_memory_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers as they sit in memory, non-persistent
    buffers included (shared tensors once)."""
    return _unique_bytes(list(model.parameters()) + list(model.buffers()))


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


def _dense_weight(weight: torch.Tensor) -> torch.Tensor:
    """A layer's weight as numbers: a bitsandbytes 4-bit weight (packed uint8 codes) dequantized."""
    state = getattr(weight, "quant_state", None)
    if state is not None and not weight.is_floating_point():
        import bitsandbytes.functional as bnb_functional

        return bnb_functional.dequantize_4bit(weight.data, state)
    return weight


@torch.no_grad()
def weight_sparsity(model: torch.nn.Module) -> float | None:
    """Share of exactly-zero entries in the weights of linear and convolution layers (a
    bitsandbytes 4-bit layer's weights dequantized, not its packed bytes)."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            weight = _dense_weight(module.weight)
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return zeros / total if total else None


def train_step_flops(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, precision: str
) -> int:
    """Operations of one forward and backward pass on `batch` (the optimizer's update is not
    counted), by FlopCounterMode with harness/measure/flops.py's formulas. Executed operations: a
    frozen weight's gradient is not computed, so it is not counted. The model is left
    exactly as it was (harness/measure/passes.py), so training afterwards is what it would have been."""
    with untraced_backward(model, device), flop_counter() as counter:
        loss_backward(model, batch, device, precision)
    return int(counter.get_total_flops())


def forward_flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor], device: torch.device, precision: str) -> int:
    """Floating-point (or integer) operations of one forward pass on `inputs`, counted by
    torch's FlopCounterMode from the operators that actually run (matmuls, convolutions,
    attention; harness/measure/flops.py): a model made smaller (SVD, channel pruning, token merging)
    counts less; a masked sparse model run by dense kernels counts the same as the dense model.
    The pass runs in eval mode; the model's modes and buffers are left as they were."""
    with unchanged(model):
        model.eval()
        with flop_counter() as counter, torch.inference_mode():
            with autocast(device, precision):
                model(**inputs)
    return int(counter.get_total_flops())
