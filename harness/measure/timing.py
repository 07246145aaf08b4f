"""Timing: wall time of a region and latency percentiles, each honest about how it measured.

Time on GPU is taken with CUDA events (or a synchronize around the timed region), never a bare
wall clock around asynchronous kernel launches; on CPU, `time.perf_counter`. Latency is a
percentile over repeats after warm-up, never a single number.
"""

from __future__ import annotations

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
