"""The CPU heap's part in a training step: glibc's malloc settings and the page faults a step pays.

A CPU backward pass allocates every parameter's gradient afresh and frees it soon after. With
glibc's default settings the freed blocks often go back to the kernel (an ``munmap``, or a trim of
the heap's top) and the next allocation faults their pages in again; how often depends on the
heap's layout left by earlier steps, so it moves with the order of the providers.
``mtl-fast bench --malloc steady`` sets the three settings of :data:`STEADY` for every provider
alike; what they changed, measured, is in docs/strategies.md ("The CPU heap's part").
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
        """The counters now; only where :attr:`AVAILABLE`."""
        r = resource.getrusage(resource.RUSAGE_SELF)
        return KernelCounters(r.ru_minflt, r.ru_stime)

    def since(self, start: KernelCounters) -> KernelCounters:
        return KernelCounters(self.faults - start.faults, self.sys_s - start.sys_s)
