"""The compiled CPU Gram and combination kernels (csrc/cpu/dense.cpp): the ctypes calls and the
registered ops behind :mod:`~mtl_fast.kernels.cpu.gram` and :mod:`~mtl_fast.kernels.cpu.combine`.

Measured on one thread of a loaded 2-core AMD EPYC (medians; T = 10, P = 11.2 M fp32, 447 MB):
the Gram takes 53-57 ms here against 300-540 ms for ``torch.mm(J, J.T)`` (MKL packs panels for a
10 × 10 output) and 19-34 ms for merely reading J once; T = 40, P = 11.2 M: 305-335 ms with the
AVX-512 kernel, 450-460 ms with AVX2 (see docs/strategies.md). fp16/bf16 input goes to the
reference (the kernels take fp32 and fp64)."""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Iterator

import torch

from mtl_fast.kernels.cpu.loader import dense_kernels

KERNEL_DTYPES = (torch.float32, torch.float64)


def _kernels() -> dict:
    loaded = dense_kernels()
    if isinstance(loaded, str):
        raise RuntimeError(f"backend='cpu' cannot run gram/combine: {loaded}")
    return loaded


# The kernels' instruction sets, in the order of the C ABI (csrc/cpu/dense.h): the portable C++,
# AVX2+FMA, AVX-512 (the Gram; the combination uses AVX2 there).
ISAS = ("portable", "avx2", "avx512")


def isa() -> str:
    """The instruction set the Gram and combination kernels use: the best the processor has
    unless :func:`use_isa` set a lower one."""
    return ISAS[_kernels()["dense_isa"]()]


def available_isas() -> tuple[str, ...]:
    """Every instruction set the kernels can use on this processor, portable first."""
    return ISAS[: _kernels()["dense_best_isa"]() + 1]


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Run the kernels with the instruction set ``name`` (one of :data:`ISAS` that
    :func:`available_isas` lists) inside the block, process-wide: for tests and measurements."""
    if name not in available_isas():
        raise ValueError(f"isa must be one of {available_isas()} on this processor, got {name!r}")
    fns = _kernels()
    previous = fns["dense_isa"]()
    fns["dense_set_isa"](ISAS.index(name))
    try:
        yield
    finally:
        fns["dense_set_isa"](previous)


def fma_rate(min_time: float = 0.2) -> float:
    """fp32 FMAs per second that one thread of this core sustains on the kernels' instruction set
    (:func:`isa`): independent chains of vector FMAs on registers, no memory touched
    (csrc/cpu/dense_peak.h). The best of bursts of at least 20 ms each, over at least
    ``min_time`` seconds and one such burst, timed in thread CPU time so that time slices given
    to other processes do not count. The ceiling of any fp32 Gram on this core: it needs
    T(T+1)/2 FMAs per column of J."""
    burst = _kernels()["fma_burst_f32"]
    out = (ctypes.c_double * 2)()
    steps, best, spent = 1 << 16, 0.0, 0.0
    while spent < min_time or best == 0.0:
        t0 = time.thread_time()
        status = burst(steps, ctypes.addressof(out))
        elapsed = time.thread_time() - t0
        if status != 0:
            raise RuntimeError(f"backend='cpu' fma_burst failed with status {status}")
        spent += elapsed
        if elapsed < 0.02:  # too short to time: longer bursts
            steps *= 2
            continue
        best = max(best, out[0] / elapsed)
    return best


def _rows(J: torch.Tensor) -> torch.Tensor:
    """(B, T, P) with unit stride along P and batches T·ld apart (a copy only when not)."""
    B, T, P = J.shape
    if J.stride(2) != 1 or (B > 1 and J.stride(0) != T * J.stride(1)) or J.stride(1) < P:
        J = J.contiguous()
    return J


def _threads(numel: int) -> int:
    # Threads pay for themselves only on large problems (the kernels split P in ≥ 64 k parts).
    return max(1, torch.get_num_threads()) if numel >= 1 << 20 else 1


def run_gram(J: torch.Tensor) -> torch.Tensor:
    J = _rows(J)
    B, T, P = J.shape
    K = torch.empty((B, T, T), dtype=J.dtype)
    fn = _kernels()["gram_f32" if J.dtype == torch.float32 else "gram_f64"]
    status = fn(J.data_ptr(), B, T, P, J.stride(1), K.data_ptr(), _threads(J.numel()))
    if status != 0:
        raise RuntimeError(f"backend='cpu' gram failed with status {status} (B={B}, T={T}, P={P})")
    return K


def run_combine(J: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    J = _rows(J)
    B, T, P = J.shape
    wk = w.to(J.dtype).contiguous()
    if out is None:
        out = torch.empty((B, P), dtype=J.dtype)
    fn = _kernels()["combine_f32" if J.dtype == torch.float32 else "combine_f64"]
    status = fn(
        J.data_ptr(), wk.data_ptr(), B, T, P, J.stride(1), out.data_ptr(), _threads(J.numel())
    )
    if status != 0:
        raise RuntimeError(f"backend='cpu' combine failed with status {status} (B={B}, T={T})")
    return out


# Registered ops, so that torch.compile(fullgraph=True) traces the kernels as opaque nodes (the
# weights and the Gram are constants of a step: no backward formula, as for min_norm).
@torch.library.custom_op("mtl_fast_cpu::gram", mutates_args=(), device_types="cpu")
def _gram_op(J: torch.Tensor) -> torch.Tensor:
    return run_gram(J)


@_gram_op.register_fake
def _gram_fake(J: torch.Tensor) -> torch.Tensor:
    torch._check(J.dim() == 3, lambda: f"J must have shape (B, T, P), got {tuple(J.shape)}")
    return J.new_empty((J.shape[0], J.shape[1], J.shape[1]))


@torch.library.custom_op("mtl_fast_cpu::combine", mutates_args=(), device_types="cpu")
def _combine_op(J: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return run_combine(J, w, None)


@_combine_op.register_fake
def _combine_fake(J: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    torch._check(J.dim() == 3, lambda: f"J must have shape (B, T, P), got {tuple(J.shape)}")
    return J.new_empty((J.shape[0], J.shape[2]))
