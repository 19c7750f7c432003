"""``dual_cone`` on the compiled CPU solver (csrc/cpu/dual_cone.cpp), as the op
``torch.ops.mtl_fast_cpu.dual_cone``.

The solver runs the reference algorithm (:mod:`mtl_fast.kernels.reference.dual_cone`) row by row
in fp64, iterate for iterate, with the factor of the free block kept across iterations instead
of a masked T×T Cholesky per iteration and row. Measured for UPGrad weights through
``mtl_fast.upgrad_weights`` on one thread (thread CPU time, medians; docs/upgrad.md): 0.05-0.13
ms at T ≤ 10 (the solve itself 1-5 µs) against 0.27-6.5 ms for the reference; 0.16-8.6 ms at
T = 128 against 0.75-211 ms.
"""

from __future__ import annotations

from typing import Any

import torch

from mtl_fast._core.contracts import DualConeHyper
from mtl_fast.kernels.cpu.loader import dual_cone_library
from mtl_fast.kernels.cpu.registered import register_constant_op, traced

# Largest T the solver accepts (kMaxT in csrc/cpu/dual_cone.cpp; scratch is ≈ 4·T² doubles).
MAX_DUAL_CONE_TASKS = 4096

_STATUS = {
    -1: "an invalid argument",
    -2: "an allocation failure (its scratch is about 4·T² doubles)",
}


def solve(
    U: torch.Tensor, G: torch.Tensor, hyper: DualConeHyper, /, *, counts: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The library call on CPU tensors U (B, R, T), G (B, T, T) of any float dtype
    (``hyper.sync_free`` changes nothing: see :func:`dual_cone`).

    Returns:
        W (B, R, T) float64; the factorisations of each row (B, R) int64 when ``counts``, else
        None; the number of rows that did not meet the stopping rule within ``max_iter``.
    """
    fn = dual_cone_library()
    if isinstance(fn, str):
        raise RuntimeError(f"backend='cpu' cannot run dual_cone: {fn}")
    Ud = U.to(torch.float64).contiguous()
    Gd = G.to(torch.float64).contiguous()
    B, R, T = Ud.shape
    W = torch.empty_like(Ud)
    iters = torch.empty((B, R), dtype=torch.int64) if counts else None
    status = fn(
        Ud.data_ptr(),
        Gd.data_ptr(),
        W.data_ptr(),
        B,
        R,
        T,
        *_scalars(hyper),
        None if iters is None else iters.data_ptr(),
    )
    if status < 0:
        what = _STATUS.get(status, f"status {status}")
        raise RuntimeError(f"backend='cpu' dual_cone failed with {what} (B={B}, R={R}, T={T})")
    return W, iters, int(status)


def _scalars(hyper: DualConeHyper) -> tuple[float, float, int, float]:
    """What the library and the registered op take: norm_eps, reg_eps, max_iter, tol."""
    return float(hyper.norm_eps), float(hyper.reg_eps), int(hyper.max_iter), float(hyper.tol)


def _project(
    U: torch.Tensor, G: torch.Tensor, norm_eps: float, reg_eps: float, max_iter: int, tol: float
) -> torch.Tensor:
    W, _, _ = solve(U, G, DualConeHyper(norm_eps, reg_eps, max_iter, tol, sync_free=False))
    return W if G.dtype == torch.float64 else W.to(G.dtype)


def _dual_cone_fake(U: torch.Tensor, G: torch.Tensor, *options: Any) -> torch.Tensor:
    torch._check(U.dim() == 3, lambda: f"U must have shape (B, R, T), got {tuple(U.shape)}")
    torch._check(G.dim() == 3, lambda: f"G must have shape (B, T, T), got {tuple(G.shape)}")
    return U.new_empty(U.shape, dtype=G.dtype)


register_constant_op("dual_cone", _project, _dual_cone_fake)


def dual_cone(U: torch.Tensor, G: torch.Tensor, hyper: DualConeHyper, /) -> torch.Tensor:
    """Projection weights. U: (B, R, T), G: (B, T, T) fp32/fp64 CPU tensors → (B, R, T) in G's
    dtype, W ≥ U.

    ``hyper.sync_free`` changes nothing here: the compiled loop stops each row on its own once
    it meets the stopping rule (or after ``max_iter`` factorisations), and on the CPU there is
    no device to synchronise with.
    """
    if traced(U) or traced(G):
        out: torch.Tensor = torch.ops.mtl_fast_cpu.dual_cone(U, G, *_scalars(hyper))
        return out
    return _project(U, G, *_scalars(hyper))
