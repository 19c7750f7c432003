"""The Gram-space aggregators on the compiled CPU library (csrc/cpu/aggregators.cpp), as the ops
``torch.ops.mtl_fast_cpu.{pcgrad, imtlg, cagrad, nash_mtl, aligned_mtl, config}``.

Each op runs the reference algorithm (:mod:`mtl_fast.kernels.reference.aggregators`) problem by
problem in fp64 as one compiled loop, where the reference spends 50-700 small torch operations
per iteration or per solve; the eigen-based ones use a cyclic Jacobi eigensolver. Every op has a
fake implementation, so ``torch.compile(fullgraph=True)`` traces it as one opaque node; called
eagerly on a plain tensor, the functions below skip the dispatcher and call the library
directly: measured at T = 10 (IMTL-G), 9 µs per direct call against 16.5 µs through the custom
op's eager dispatch. The coefficients are not differentiable: they are a constant of the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from mtl_fast._core.contracts import (
    ALIGNED_MTL_SCALE_MODES,
    AlignedMTLHyper,
    CAGradHyper,
    NashMTLHyper,
    PinvHyper,
)
from mtl_fast.kernels.cpu.loader import aggregator_library
from mtl_fast.kernels.cpu.registered import register_constant_op, traced, weights_like

# Largest T the library accepts (kMaxT in csrc/cpu/aggregators.cpp).
MAX_AGGREGATOR_TASKS = 4096

_STATUS = {1: "an invalid argument", 2: "an allocation failure (its scratch is a few T² doubles)"}
_SCALE_MODES = {mode: code for code, mode in enumerate(ALIGNED_MTL_SCALE_MODES)}


def _fn(op: str, dtype: torch.dtype) -> Callable[..., int]:
    loaded = aggregator_library()
    if isinstance(loaded, str):
        raise RuntimeError(f"backend='cpu' cannot run {op}: {loaded}")
    if dtype == torch.float64:
        return loaded[f"{op}_f64"]
    if dtype == torch.float32:
        return loaded[f"{op}_f32"]
    raise TypeError(f"backend='cpu' {op} takes fp32 or fp64 K, got {dtype}")


def _check(status: int, op: str, B: int, T: int) -> None:
    if status != 0:
        what = _STATUS.get(status, f"status {status}")
        raise RuntimeError(f"backend='cpu' {op} failed with {what} (B={B}, T={T})")


def _c(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    x = x if dtype is None or x.dtype == dtype else x.to(dtype)
    return x if x.is_contiguous() else x.contiguous()


# ---------------------------------------------------------------------------------------------
# The library calls. K: (B, T, T) fp32/fp64 CPU tensor; vectors (B, T) fp64; order (B, T, T).
# ---------------------------------------------------------------------------------------------


def _pcgrad(K: Tensor, order: Tensor) -> Tensor:
    fn = _fn("pcgrad", K.dtype)
    K, order = _c(K), _c(order, torch.int64)
    B, T = K.shape[0], K.shape[1]
    c = torch.empty((B, T), dtype=K.dtype)
    _check(fn(K.data_ptr(), order.data_ptr(), c.data_ptr(), B, T), "pcgrad", B, T)
    return c


def _imtlg(K: Tensor, rtol: float) -> Tensor:
    fn = _fn("imtlg", K.dtype)
    K = _c(K)
    B, T = K.shape[0], K.shape[1]
    c = torch.empty((B, T), dtype=K.dtype)
    _check(fn(K.data_ptr(), c.data_ptr(), B, T, rtol), "imtlg", B, T)
    return c


def _cagrad(
    K: Tensor, c: float, norm_eps: float, rescale: int, max_iter: int, tol: float
) -> Tensor:
    fn = _fn("cagrad", K.dtype)
    K = _c(K)
    B, T = K.shape[0], K.shape[1]
    out = torch.empty((B, T), dtype=K.dtype)
    status = fn(K.data_ptr(), out.data_ptr(), B, T, c, norm_eps, rescale, max_iter, tol)
    _check(status, "cagrad", B, T)
    return out


def _nash_mtl(
    K: Tensor, prev_alpha: Tensor, max_norm: float, max_iter: int, tol: float
) -> tuple[Tensor, Tensor]:
    fn = _fn("nash_mtl", K.dtype)
    K, prev = _c(K), _c(prev_alpha, torch.float64)
    B, T = K.shape[0], K.shape[1]
    weights = torch.empty((B, T), dtype=K.dtype)
    alpha = torch.empty((B, T), dtype=K.dtype)
    status = fn(
        K.data_ptr(),
        prev.data_ptr(),
        weights.data_ptr(),
        alpha.data_ptr(),
        B,
        T,
        max_norm,
        max_iter,
        tol,
    )
    _check(status, "nash_mtl", B, T)
    return weights, alpha


def _aligned_mtl(K: Tensor, pref: Tensor, scale_mode: str, rtol: float) -> Tensor:
    fn = _fn("aligned_mtl", K.dtype)
    if scale_mode not in _SCALE_MODES:
        raise ValueError(f"scale_mode must be one of {tuple(_SCALE_MODES)}, got {scale_mode!r}")
    K, p = _c(K), _c(pref, torch.float64)
    B, T = K.shape[0], K.shape[1]
    c = torch.empty((B, T), dtype=K.dtype)
    status = fn(K.data_ptr(), p.data_ptr(), c.data_ptr(), B, T, _SCALE_MODES[scale_mode], rtol)
    _check(status, "aligned_mtl", B, T)
    return c


def _config(K: Tensor, pref: Tensor, rtol: float) -> Tensor:
    fn = _fn("config", K.dtype)
    K, p = _c(K), _c(pref, torch.float64)
    B, T = K.shape[0], K.shape[1]
    c = torch.empty((B, T), dtype=K.dtype)
    _check(fn(K.data_ptr(), p.data_ptr(), c.data_ptr(), B, T, rtol), "config", B, T)
    return c


# ---------------------------------------------------------------------------------------------
# Registered ops (torch.compile, export, tensor subclasses): the library calls above.
# ---------------------------------------------------------------------------------------------


def _nash_mtl_fake(K: Tensor, *args: Any) -> tuple[Tensor, Tensor]:
    return weights_like(K), weights_like(K)


register_constant_op("pcgrad", _pcgrad)
register_constant_op("imtlg", _imtlg)
register_constant_op("cagrad", _cagrad)
register_constant_op("nash_mtl", _nash_mtl, _nash_mtl_fake)
register_constant_op("aligned_mtl", _aligned_mtl)
register_constant_op("config", _config)


# ---------------------------------------------------------------------------------------------
# Backend functions (the contracts of mtl_fast._core.contracts)
# ---------------------------------------------------------------------------------------------


def pcgrad(K: Tensor, order: Tensor, /) -> Tensor:
    """PCGrad weights. K: (B, T, T) fp32/fp64, order: (B, T, T) int64 → (B, T) in K's dtype."""
    if traced(K):
        out: Tensor = torch.ops.mtl_fast_cpu.pcgrad(K, order)
        return out
    return _pcgrad(K, order)


def imtlg(K: Tensor, hyper: PinvHyper, /) -> Tensor:
    """IMTL-G weights. K: (B, T, T) fp32/fp64 → (B, T) in K's dtype."""
    if traced(K):
        out: Tensor = torch.ops.mtl_fast_cpu.imtlg(K, float(hyper.rtol))
        return out
    return _imtlg(K, float(hyper.rtol))


def cagrad(K: Tensor, hyper: CAGradHyper, /) -> Tensor:
    """CAGrad weights. K: (B, T, T) fp32/fp64 → (B, T) in K's dtype.

    ``hyper.sync_free`` changes nothing here: each problem stops on its own inside the compiled
    loop, and on the CPU there is no device to synchronise with.
    """
    h = hyper
    args = (float(h.c), float(h.norm_eps), int(h.rescale), int(h.max_iter), float(h.tol))
    if traced(K):
        out: Tensor = torch.ops.mtl_fast_cpu.cagrad(K, *args)
        return out
    return _cagrad(K, *args)


def nash_mtl(K: Tensor, prev_alpha: Tensor, hyper: NashMTLHyper, /) -> tuple[Tensor, Tensor]:
    """Nash-MTL (weights, alpha). K: (B, T, T) fp32/fp64, prev_alpha: (B, T) fp64 → both (B, T)
    in K's dtype. ``hyper.sync_free`` changes nothing here (see :func:`cagrad`)."""
    args = (float(hyper.max_norm), int(hyper.max_iter), float(hyper.tol))
    if traced(K):
        weights, alpha = torch.ops.mtl_fast_cpu.nash_mtl(K, prev_alpha, *args)
        return weights, alpha
    return _nash_mtl(K, prev_alpha, *args)


def aligned_mtl(K: Tensor, pref: Tensor, hyper: AlignedMTLHyper, /) -> Tensor:
    """Aligned-MTL weights. K: (B, T, T) fp32/fp64, pref: (B, T) fp64 → (B, T) in K's dtype."""
    args = (hyper.scale_mode, float(hyper.rtol))
    if traced(K):
        out: Tensor = torch.ops.mtl_fast_cpu.aligned_mtl(K, pref, *args)
        return out
    return _aligned_mtl(K, pref, *args)


def config(K: Tensor, pref: Tensor, hyper: PinvHyper, /) -> Tensor:
    """ConFIG weights. K: (B, T, T) fp32/fp64, pref: (B, T) fp64 → (B, T) in K's dtype."""
    if traced(K):
        out: Tensor = torch.ops.mtl_fast_cpu.config(K, pref, float(hyper.rtol))
        return out
    return _config(K, pref, float(hyper.rtol))
