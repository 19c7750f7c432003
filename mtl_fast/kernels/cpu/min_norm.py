"""``min_norm`` on the compiled CPU solver (csrc/cpu/min_norm.cpp), as the op
``torch.ops.mtl_fast_cpu.min_norm``."""

from __future__ import annotations

import torch

from mtl_fast.kernels.cpu.loader import library
from mtl_fast.kernels.cpu.registered import register_constant_op, traced

# Largest T the solver accepts (kMaxT in csrc/cpu/min_norm.cpp; scratch is 3·T² doubles).
MAX_MIN_NORM_TASKS = 4096

_STATUS = {1: "an invalid argument", 2: "an allocation failure (its scratch is 3·T² doubles)"}


def _solve(K: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    """The library call. K: (B, T, T) fp32/fp64 on the CPU -> (B, T) in K's dtype."""
    loaded = library()
    if isinstance(loaded, str):
        raise RuntimeError(f"backend='cpu' cannot run min_norm: {loaded}")
    if K.dtype == torch.float64:
        fn = loaded[0]
    elif K.dtype == torch.float32:
        fn = loaded[1]
    else:
        raise TypeError(f"backend='cpu' min_norm takes fp32 or fp64 K, got {K.dtype}")
    if not K.is_contiguous():
        K = K.contiguous()
    B, T = K.shape[0], K.shape[1]
    w = torch.empty((B, T), dtype=K.dtype)
    status = fn(K.data_ptr(), w.data_ptr(), B, T, max_iter, tol)
    if status != 0:
        what = _STATUS.get(status, f"status {status}")
        raise RuntimeError(f"backend='cpu' min_norm failed with {what} (B={B}, T={T})")
    return w


register_constant_op("min_norm", _solve)


def min_norm(K: torch.Tensor, /, *, max_iter: int, tol: float, sync_free: bool) -> torch.Tensor:
    """Min-norm weights on the simplex. K: (B, T, T) fp32/fp64 CPU tensor -> (B, T), K's dtype.

    ``sync_free`` changes nothing here: the compiled loop stops each problem on its own once
    its duality gap is small enough (or after ``max_iter`` iterations), and on the CPU there is
    no device to synchronise with, so the early exit costs no host read-back.
    """
    if traced(K):
        out: torch.Tensor = torch.ops.mtl_fast_cpu.min_norm(K, max_iter, float(tol))
        return out
    return _solve(K, max_iter, float(tol))
