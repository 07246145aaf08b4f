"""Memory: the peak a region used and what training memory is made of.

Peak memory on GPU is `max_memory_allocated` / `max_memory_reserved` after a reset. On CPU the
primary figure is what the region added: its peak resident set size minus the resident set when it
started (libraries, datasets and the model already loaded are not the region's); the process's own
peak is kept beside it. On Linux the peak is reset at the start (writing 5 to /proc/self/clear_refs
resets VmHWM); elsewhere only the peak since the process started is known, so the added figure is
an upper bound. `kind` records which, so such numbers are never mixed unknowingly.
"""

from __future__ import annotations

import resource
import sys
from dataclasses import dataclass

import torch


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
