"""Helpers shared by the Triton launchers: interpreter detection, SM counts, block sizes."""

from __future__ import annotations

import functools
import re

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction


@triton.jit
def _probe(x):
    pass


# ``triton.jit`` decides at decoration time whether a kernel is compiled or interpreted
# (TRITON_INTERPRET=1 read when the kernel modules are imported), so ask a decorated function.
INTERPRETED: bool = not isinstance(_probe, JITFunction)


def _release(version: str) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", version)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def interpreter_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why this Triton's interpreter cannot run the kernels next to this NumPy, or None.

    Triton 3.6 and older turn one-element arrays into Python ints with ``int(array)``, which
    NumPy 2.4 rejects for arrays of one or more dimensions: every kernel that loops over a
    runtime range fails. Triton 3.7 fixed it. Compiled kernels (a GPU) are not affected.
    """
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (
            f"Triton {triton_version}'s interpreter cannot run with NumPy {numpy_version} "
            "(it needs NumPy < 2.4; Triton ≥ 3.7 works with both): "
            "pip install 'numpy<2.4' or a newer triton"
        )
    return None


# The programs a "persistent" launch aims for per SM. Under the interpreter every program is a
# Python call, so a CPU run gets a handful of programs in all.
PROGRAMS_PER_SM = 4
INTERPRETER_SMS = 2

TL_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


@functools.cache
def _sm_count(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a small stand-in under the interpreter)."""
    if device.type != "cuda":
        return INTERPRETER_SMS
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def pow2(n: int) -> int:
    return int(triton.next_power_of_2(max(int(n), 1)))


# Triton's interpreter converts fp32 → bf16 by truncation (and fp64 → bf16 to zero); compiled,
# the conversion rounds to nearest even. Under the interpreter, round the bits by hand.
_EMULATE_BF16: tl.constexpr = tl.constexpr(INTERPRETED)


@triton.jit
def round_to(x, DT: tl.constexpr):
    """x rounded to nearest (ties to even) in dtype DT, as torch's ``.to(DT)`` does."""
    if _EMULATE_BF16 and DT == tl.bfloat16:
        bits = x.to(tl.float32).to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)  # exact: low bits are zero
    else:
        return x.to(DT)
