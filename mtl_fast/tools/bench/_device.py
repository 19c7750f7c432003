"""What a benchmark ran on: device, versions, commit, and the device's memory bandwidth, both
measured (a large copy) and from the spec sheet."""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from mtl_fast.tools.bench._timing import measure

# Peak DRAM bandwidth from the vendors' spec sheets, bytes/s, matched against the device name
# (most specific first). Only used for reporting a fraction of peak.
SPEC_BANDWIDTH: tuple[tuple[str, float], ...] = (
    ("H200", 4.8e12),
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100-SXM4-80GB", 2.039e12),
    ("A100-SXM4-40GB", 1.555e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100-PCIE-40GB", 1.555e12),
)


def device_name(device: torch.device) -> str:
    """Marketing name of a CUDA device, or the CPU model with the thread count torch uses."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def spec_bandwidth(device: torch.device) -> float | None:
    """Spec-sheet peak memory bandwidth (bytes/s) of a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, bw in SPEC_BANDWIDTH:
        if key in name:
            return bw
    return None


def copy_bandwidth(
    device: torch.device, *, nbytes: int | None = None, min_time: float = 0.3
) -> float:
    """Measured bandwidth (bytes/s) of ``dst.copy_(src)`` on ``device``.

    Counts 2 × ``nbytes`` per copy (one read, one write), the same convention as the op
    formulas. Default size: 1 GiB per buffer on a GPU (far beyond L2), 256 MiB on the CPU.
    """
    if nbytes is None:
        nbytes = 2**30 if device.type == "cuda" else 2**28
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    t = measure(lambda: dst.copy_(src), device, warmup=2, min_time=min_time, flush_cache=False)
    return 2 * n * 4 / t.median


def _cpu_kernels(device: torch.device) -> ModuleType | None:
    """:mod:`mtl_fast.kernels.cpu.dense` when ``device`` is the CPU and its compiled kernels
    load, else None."""
    from mtl_fast.kernels.cpu import dense
    from mtl_fast.kernels.cpu.loader import dense_kernels

    return dense if device.type == "cpu" and not isinstance(dense_kernels(), str) else None


def cpu_fma_rate(device: torch.device) -> float | None:
    """One thread's fp32 FMA rate on the CPU (G per second, the compiled kernels' instruction
    set: :func:`mtl_fast.kernels.cpu.dense.fma_rate`); None on another device or when the CPU
    kernels are not built."""
    dense = _cpu_kernels(device)
    return None if dense is None else dense.fma_rate() / 1e9


def git_commit() -> str | None:
    """The commit of the source tree this package was imported from (+ "-dirty"), or None."""
    root = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
        suffix = "-dirty" if dirty.returncode == 0 and dirty.stdout.strip() else ""
        return sha.stdout.strip() + suffix
    except (OSError, subprocess.SubprocessError):
        return None


def _version(module: str) -> str | None:
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def run_metadata(device: torch.device) -> dict[str, Any]:
    """Device, versions, commit, date and load: the header of every result file."""
    import mtl_fast

    meta: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "mtl_fast": mtl_fast.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "torchjd": _version("torchjd"),
        "numpy": _version("numpy"),
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
        "backends": {
            name: (None if s.available else s.reason) for name, s in mtl_fast.backends().items()
        },
    }
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        # Other processes on a small machine skew CPU timings; the load says how much.
        meta["load_average_1m"] = os.getloadavg()[0]
        meta["cpu_count"] = os.cpu_count()
    if device.type == "cpu":
        # The instruction set of the compiled Gram and combination kernels (None: not built).
        dense = _cpu_kernels(device)
        meta["cpu_isa"] = None if dense is None else dense.isa()
    return meta
