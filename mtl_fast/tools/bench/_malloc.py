"""The CPU heap's part in a training step: glibc's malloc settings and the page faults a step pays.

A CPU backward pass allocates every parameter's gradient afresh and frees it soon after. With
glibc's default settings the freed blocks go back to the kernel (an ``munmap``, or a trim of the
heap's top) and the next allocation of that size faults its pages in again. Measured on a 2-core
AMD EPYC VM, one torch thread, ResNet-18 at T = 40 (P = 11.2 M): 550 k minor page faults and
0.9 s of kernel time in every step of both the floor and MGDA, 40 % of a 2.4 s step; with the
settings of :func:`steady_malloc` none after the first step, and steps of 1.4-2.1 s. How many
faults a step takes depends on the heap's layout left by earlier steps, so it moves with the order
of the providers, and one setting alone can make it worse (the trim threshold alone: 1.35 M faults
per step). ``mtl-fast bench --malloc steady`` sets all three for every provider alike.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

try:
    import resource
except ImportError:  # not a Unix: no getrusage, no counters
    resource = None  # type: ignore[assignment]

# mallopt's parameter numbers (glibc's malloc.h) and the values "steady" sets: the largest
# mmap threshold glibc accepts on 64-bit systems (larger blocks are still mapped and unmapped),
# a trim threshold no step reaches, and 64 MiB of padding whenever the heap grows.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
STEADY: dict[str, tuple[int, int]] = {
    "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 32 * 2**20),
    "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, 2**31 - 1),
    "M_TOP_PAD": (M_TOP_PAD, 64 * 2**20),
}
MODES = ("default", "steady")


def steady_malloc() -> str:
    """Keep freed heap memory in the process (glibc ``mallopt``); returns what was set, for the
    result file. Raises RuntimeError where the C library has no ``mallopt`` (it is glibc's) or
    refuses a setting."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        raise RuntimeError("--malloc steady needs glibc's mallopt, which this C library lacks")
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    for key, (param, value) in STEADY.items():
        if mallopt(param, value) != 1:
            raise RuntimeError(f"mallopt({key}, {value}) was refused by this C library")
    return ", ".join(f"{k}={v}" for k, (_, v) in STEADY.items())


@dataclass(frozen=True)
class KernelCounters:
    """The process's minor page faults and system CPU time so far (``getrusage``)."""

    faults: int
    sys_s: float

    # Whether this platform has them (getrusage is Unix's).
    AVAILABLE = resource is not None

    @staticmethod
    def now() -> KernelCounters:
        if resource is None:
            return KernelCounters(0, 0.0)
        r = resource.getrusage(resource.RUSAGE_SELF)
        return KernelCounters(r.ru_minflt, r.ru_stime)

    def since(self, start: KernelCounters) -> KernelCounters:
        return KernelCounters(self.faults - start.faults, self.sys_s - start.sys_s)
