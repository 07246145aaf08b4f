"""The environment a result was measured in: device, libraries, code version, host."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from harness import __version__


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return ""


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Commit of the harness source tree, with '-dirty' when it has uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _driver_version() -> str:
    """The CUDA driver's version as major.minor (torch reports it as 1000*major + 10*minor)."""
    try:
        v = torch._C._cuda_getDriverVersion()
    except (AttributeError, RuntimeError):
        return ""
    return f"{v // 1000}.{(v % 1000) // 10}"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model: what hardware-dependent costs are compared within."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model()


def describe(device: torch.device) -> dict[str, object]:
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": device_name(device),
        "cuda_version": torch.version.cuda or "",
        "cuda_driver_version": _driver_version() if cuda else "",
        "cpu_model": _cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "transformers_version": _version("transformers"),
        "peft_version": _version("peft"),
        "datasets_version": _version("datasets"),
        "python_version": platform.python_version(),
        "harness_version": __version__,
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
