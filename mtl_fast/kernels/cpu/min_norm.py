"""``min_norm`` on the compiled CPU solver (csrc/cpu/min_norm.cpp), as the op
``torch.ops.mtl_fast_cpu.min_norm``."""

from __future__ import annotations

from typing import Any

import torch

from mtl_fast.kernels.cpu.loader import library

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


@torch.library.custom_op("mtl_fast_cpu::min_norm", mutates_args=(), device_types="cpu")
def _min_norm_op(K: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    return _solve(K, max_iter, tol)


@_min_norm_op.register_fake
def _min_norm_fake(K: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    torch._check(K.dim() == 3, lambda: f"K must have shape (B, T, T), got {tuple(K.shape)}")
    return K.new_empty((K.shape[0], K.shape[1]))


def _min_norm_setup(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    # The weights are a constant of the step, as on the direct path below (no history there):
    # no gradient flows back to K, and autograd and torch.compile need no backward formula.
    ctx.mark_non_differentiable(output)


def _min_norm_backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
    return None, None, None


_min_norm_op.register_autograd(_min_norm_backward, setup_context=_min_norm_setup)


def min_norm(K: torch.Tensor, /, *, max_iter: int, tol: float, sync_free: bool) -> torch.Tensor:
    """Min-norm weights on the simplex. K: (B, T, T) fp32/fp64 CPU tensor -> (B, T), K's dtype.

    ``sync_free`` changes nothing here: the compiled loop stops each problem on its own once
    its duality gap is small enough (or after ``max_iter`` iterations), and on the CPU there is
    no device to synchronise with, so the early exit costs no host read-back.
    """
    if torch.compiler.is_compiling() or type(K) is not torch.Tensor:
        # Traced (torch.compile, export) or a tensor subclass: go through the registered op.
        out: torch.Tensor = torch.ops.mtl_fast_cpu.min_norm(K, max_iter, float(tol))
        return out
    return _solve(K, max_iter, float(tol))
