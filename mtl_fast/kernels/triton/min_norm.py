"""Batched min-norm (MGDA) solve: one program per problem, every iteration on chip.

The algorithm and stopping rule are the reference's (:mod:`mtl_fast.kernels.reference.min_norm`):
normalise K by max_i K_ii, start at the vertex with the smallest K_ii, then away-step
Frank-Wolfe with exact line search, each step followed by the monotone face correction toward
the affine min-norm point of the support; stop once the duality gap 2(wᵀKw − min_i (Kw)_i)
≤ tol (relative to max K_ii by the normalisation), or after ``max_iter`` iterations. Kw is
carried from one iteration to the next (the accepted point's product is the next one's), and
everything is computed in fp64 whatever K's dtype, as the reference does.

Differences that do not change the result beyond rounding:
- a problem stops as soon as it has converged, inside its own program; nothing is read back to
  the host, so ``sync_free`` is always honoured and the launch can be graph-captured;
- the face system (K_AA + δI) z = 1 is solved with the symmetric sweep operator (Goodnight,
  1979) on the support only, one row reduction per pivot; a non-positive pivot marks the solve
  as failed and the correction is skipped for that iteration, exactly as the reference skips a
  non-finite solve.

T is limited to ``MAX_TASKS`` (the K tile and the face system live in registers).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mtl_fast.kernels.reference.min_norm import FACE_RIDGE
from mtl_fast.kernels.triton.common import pow2

MAX_TASKS = 64


@triton.jit
def _matvec(A, x):
    """A x for a symmetric (BT, BT) A and a (BT,) x."""
    return tl.sum(A * x[None, :], axis=1)


@triton.jit
def _at(x, idx, k):
    """x[k] of a (BT,) tensor as a scalar."""
    return tl.sum(tl.where(idx == k, x, 0.0), axis=0)


# Boolean algebra through selects: Triton's interpreter stores the result of a float comparison
# as floats, on which & | ~ fail; compiled, these are the same and/or/not.
@triton.jit
def _and(a, b):
    return tl.where(a, b, False)


@triton.jit
def _or(a, b):
    return tl.where(a, True, b)


@triton.jit
def _not(a):
    return tl.where(a, False, True)


@triton.jit
def _sweep(A, active, idx, eye, T, failed, POSITIVE: tl.constexpr):
    """Sweep A on the pivots ``active``: afterwards the active block holds −(A_AA)⁻¹.
    Returns (A, failed or whether a pivot failed): a zero pivot fails, and with ``POSITIVE``
    any pivot that is not positive (A_AA is not positive definite, where a Cholesky
    factorisation fails)."""
    act_f = tl.where(active, 1.0, 0.0)
    for k in range(0, T):
        if _at(act_f, idx, k) > 0:
            r = tl.sum(tl.where(idx[:, None] == k, A, 0.0), axis=0)  # row k (= column k)
            d = _at(r, idx, k)
            if POSITIVE:
                bad = _not(d > 0)
            else:
                bad = _not(tl.abs(d) > 0)
            failed = _or(failed, bad)
            d = tl.where(bad, 1.0, d)
            rk = tl.where(idx == k, 0.0, r)
            A = A - (rk[:, None] * rk[None, :]) / d
            # Row and column k become r/d, the pivot −1/d.
            A = tl.where(idx[:, None] == k, rk[None, :] / d, A)
            A = tl.where(idx[None, :] == k, rk[:, None] / d, A)
            A = tl.where(eye & (idx[:, None] == k), -1.0 / d, A)
    return A, failed


@triton.jit
def _fw_vertices(grad, w, valid):
    """The Frank-Wolfe vertex s = argmin grad and the away vertex a = argmax of grad on the
    support of w, with their values: (s, grad_s, a, grad_a)."""
    grad_min = tl.where(valid, grad, float("inf"))
    grad_act = tl.where(w > 0, grad, float("-inf"))
    return (
        tl.argmin(grad_min, axis=0),
        tl.min(grad_min, axis=0),
        tl.argmax(grad_act, axis=0),
        tl.max(grad_act, axis=0),
    )


@triton.jit
def _fw_gamma_max(w, idx, a, use_fw):
    """The longest step: 1 toward the vertex, w_a / (1 − w_a) away from vertex a."""
    w_a = _at(w, idx, a)
    return tl.where(use_fw, 1.0, w_a / tl.where(w_a < 1.0, 1.0 - w_a, 1.0))


@triton.jit
def _fw_step(w, idx, v, use_fw, gamma, gamma_max):
    """The step of length γ toward vertex v (``use_fw``) or away from it, on the simplex; a
    full away step drops v from the support."""
    coef = tl.where(use_fw, 1.0 - gamma, 1.0 + gamma)
    w1 = coef * w + tl.where(idx == v, tl.where(use_fw, gamma, -gamma), 0.0)
    drop = _and(_and(_not(use_fw), gamma >= gamma_max), gamma > 0)
    w1 = tl.where(_and(idx == v, drop), 0.0, w1)
    w1 = tl.maximum(w1, 0.0)
    return w1 / tl.sum(w1, axis=0)


@triton.jit
def _move_toward(w, y, active, idx, ok):
    """The face correction's monotone move from w toward y: the longest step along y − w that
    keeps the support non-negative (the blocking coordinate leaves it), renormalised.
    Returns (moved, ok), ``ok`` false also when nothing is left of the support."""
    shrink = _and(active, y < 0)
    ratio = tl.where(shrink, w / tl.where(shrink, w - y, 1.0), float("inf"))
    r_min = tl.min(ratio, axis=0)
    blocker = tl.argmin(ratio, axis=0)
    step = tl.minimum(r_min, 1.0)
    moved = w + step * (y - w)
    moved = tl.where(_and(idx == blocker, r_min <= 1.0), 0.0, moved)
    moved = tl.maximum(moved, 0.0)
    moved_sum = tl.sum(moved, axis=0)
    ok = _and(ok, moved_sum > 0)
    return moved / tl.where(ok, moved_sum, 1.0), ok


@triton.jit
def _program(T, BT: tl.constexpr):
    """This program's problem b (int64), the task indices, which are tasks (< T) and the (BT, BT)
    identity mask: what every one-problem-per-program kernel starts from."""
    b = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, BT)
    return b, idx, idx < T, idx[:, None] == idx[None, :]


@triton.jit
def _gram_tile(K, b, T, si, sj, idx, valid):
    """K[b] of the contiguous (B, T, T) batch K as a (BT, BT) fp64 tile, zero outside T×T; the
    strides (si, sj) = (T, 1) load K[b], (1, T) its transpose."""
    both = valid[:, None] & valid[None, :]
    A = tl.load(K + b * T * T + idx[:, None] * si + idx[None, :] * sj, mask=both, other=0.0)
    return A.to(tl.float64)


@triton.jit
def _max_diag_scaled(Kd, valid, eye):
    """Kd / s with s = max_i Kd_ii (1 when that is ≤ 0), its diagonal, and s."""
    diag = tl.sum(tl.where(eye, Kd, 0.0), axis=1)
    scale = tl.max(tl.where(valid, diag, float("-inf")), axis=0)
    scale = tl.where(scale > 0, scale, 1.0)
    return Kd / scale, diag / scale, scale


@triton.jit
def _min_norm_kernel(
    K,
    W,
    T,
    max_iter,
    tol_value: tl.float64,
    ridge_value: tl.float64,
    BT: tl.constexpr,
):
    # K: contiguous (B, T, T); W: contiguous (B, T).
    b, idx, valid, eye = _program(T, BT)
    Kn, dn, _ = _max_diag_scaled(_gram_tile(K, b, T, T, 1, idx, valid), valid, eye)
    tol = tl.full((), tol_value, tl.float64)
    ridge = tl.full((), ridge_value, tl.float64)

    s0 = tl.argmin(tl.where(valid, dn, float("inf")), axis=0)
    w = tl.where(idx == s0, 1.0, 0.0).to(tl.float64)
    g = _matvec(Kn, w)
    it = 0
    while it < max_iter:
        f = tl.sum(w * g, axis=0)
        s, g_s, a, g_a = _fw_vertices(g, w, valid)
        gap_fw = f - g_s
        gap_aw = g_a - f
        done = 2.0 * gap_fw <= tol

        # Away-step Frank-Wolfe step with exact line search.
        use_fw = gap_fw >= gap_aw
        num = tl.maximum(tl.where(use_fw, gap_fw, gap_aw), 0.0)
        den = tl.where(use_fw, _at(dn, idx, s) - 2.0 * g_s + f, f - 2.0 * g_a + _at(dn, idx, a))
        gamma_max = _fw_gamma_max(w, idx, a, use_fw)
        gamma = tl.where(den > 0, num / tl.where(den > 0, den, 1.0), gamma_max)
        gamma = tl.minimum(gamma, gamma_max)
        gamma = tl.where(_or(done, num <= 0), 0.0, gamma)
        w1 = _fw_step(w, idx, tl.where(use_fw, s, a), use_fw, gamma, gamma_max)
        g1 = _matvec(Kn, w1)

        # Face correction: sweep (K_AA + δI) on the support; afterwards the A×A block holds
        # −(K_AA + δI)⁻¹ and z = (K_AA + δI)⁻¹ 1 is minus its row sums.
        active = w1 > 0
        both = _and(active[:, None], active[None, :])
        A = tl.where(both, Kn, 0.0) + tl.where(_and(eye, active[None, :]), ridge, 0.0)
        A, failed = _sweep(A, active, idx, eye, T, done, False)
        z = -tl.sum(tl.where(both, A, 0.0), axis=1)
        total = tl.sum(z, axis=0)
        n_bad = tl.sum(tl.where(tl.abs(z) < float("inf"), 0, 1), axis=0)  # NaN fails too
        ok = _and(_and(_not(failed), total > 0), _and(tl.abs(total) < float("inf"), n_bad == 0))
        y = z / tl.where(ok, total, 1.0)
        moved, ok = _move_toward(w1, y, active, idx, ok)
        g_moved = _matvec(Kn, moved)
        accept = _and(ok, tl.sum(moved * g_moved, axis=0) <= tl.sum(w1 * g1, axis=0))
        w_next = tl.where(accept, moved, w1)
        g_next = tl.where(accept, g_moved, g1)
        w = tl.where(done, w, w_next)
        g = tl.where(done, g, g_next)
        it = tl.where(done, max_iter, it + 1)
    tl.store(W + b * T + idx, w.to(W.dtype.element_ty), mask=valid)


def _num_warps(bt: int) -> int:
    # From ptxas for sm_90 (python -m mtl_fast.kernels.triton.aot): no spills up to BT = 16 at one
    # warp and BT = 32 at four (2 and 8 warps spill); BT = 64 spills least at 16 warps.
    return 1 if bt <= 16 else 4 if bt == 32 else 16


def min_norm(K: torch.Tensor, /, *, max_iter: int, tol: float, sync_free: bool) -> torch.Tensor:
    """(B, T, T) fp32/fp64 PSD → (B, T) simplex weights in K's dtype; T ≤ ``MAX_TASKS``.

    ``sync_free`` is accepted for the calling convention: the kernel never reads back to the
    host, and each problem stops on its own once converged.
    """
    del sync_free
    B, T, _ = K.shape
    if T > MAX_TASKS:
        raise ValueError(
            f"backend='triton' min_norm supports T ≤ {MAX_TASKS} tasks, got T={T}; "
            "use backend='reference' for larger problems"
        )
    W = torch.empty(B, T, dtype=K.dtype, device=K.device)
    bt = max(pow2(T), 2)
    _min_norm_kernel[(B,)](
        K.contiguous(),
        W,
        T,
        max_iter,
        float(tol),
        FACE_RIDGE,
        BT=bt,
        num_warps=_num_warps(bt),
    )
    return W
