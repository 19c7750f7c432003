"""Batched PCGrad, CAGrad and Nash-MTL: one program per problem, every iteration on chip.

The algorithms, constants and stopping rules are the reference's
(:mod:`mtl_fast.kernels.reference.aggregators`), computed in fp64 whatever K's dtype on the
symmetrised K, with the T×T tile in registers (T ≤ ``MAX_TASKS``). A problem stops as soon as
it has converged, inside its own program; nothing is read back to the host, so each launch is
CUDA-graph capturable and ``sync_free`` is always honoured. Where the reference's batched loop
spends 50-700 small torch operations per iteration (one launch each on a GPU), a problem here is
one program.

- PCGrad: the T projection steps of all T task loops at once, each a masked update of the
  (T, T) coefficient tile; task i's row of K at step k is gathered from memory by the order.
- CAGrad: away-step Frank-Wolfe with the closed-form line search and the face correction; the
  face system (K_AA + δI) z = [1, b_A] is solved with the symmetric sweep operator (Goodnight,
  1979) on the support, one row reduction per pivot; a zero pivot marks the solve as failed
  and skips the correction, as the reference skips a non-finite solve.
- Nash-MTL: damped Newton on F(α) = ½αᵀKα − Σ log α, the Newton system inverted by the same
  sweep operator (the Hessian K̃ + diag(1/α²) is positive definite for α > 0; a non-positive
  pivot fails the step, as a failed Cholesky does in the reference).

IMTL-G, Aligned-MTL and ConFIG (eigendecompositions) have no kernel here: on a GPU they run the
reference, whose ``torch.linalg.eigh`` synchronises with the host.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mtl_fast._core.contracts import CAGradHyper, NashMTLHyper
from mtl_fast.kernels.reference.aggregators import CAGRAD_FACE_RIDGE, CAGRAD_SMOOTH, CAGRAD_TIE
from mtl_fast.kernels.triton.common import pow2
from mtl_fast.kernels.triton.min_norm import (
    _and,
    _at,
    _fw_gamma_max,
    _fw_step,
    _fw_vertices,
    _gram_tile,
    _matvec,
    _max_diag_scaled,
    _move_toward,
    _not,
    _or,
    _program,
    _sweep,
)

MAX_TASKS = 64


@triton.jit
def _load_sym(K, b, T, idx, valid):
    """½(K + Kᵀ) of problem b of the contiguous (B, T, T) batch K as a (BT, BT) fp64 tile, zero
    outside T×T."""
    A = _gram_tile(K, b, T, T, 1, idx, valid)
    At = _gram_tile(K, b, T, 1, T, idx, valid)
    return 0.5 * (A + At)


@triton.jit
def _all_finite(x, valid):
    bad = tl.sum(tl.where(_and(valid, _not(tl.abs(x) < float("inf"))), 1, 0), axis=0)
    return bad == 0


# ---------------------------------------------------------------------------------------------
# PCGrad
# ---------------------------------------------------------------------------------------------


@triton.jit
def _pcgrad_kernel(K, O, C_out, T, sk_b, sk_i, sk_j, so_b, so_i, so_k, sc_b, BT: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    idx = tl.arange(0, BT)
    valid = idx < T
    both = valid[:, None] & valid[None, :]
    eye = idx[:, None] == idx[None, :]
    C = tl.where(_and(eye, both), 1.0, 0.0).to(tl.float64)  # row i = c_i
    base = K + b * sk_b
    for k in range(0, T):
        # j[i]: the task that task i meets at step k.
        j = tl.load(O + b * so_b + idx * so_i + k * so_k, mask=valid, other=0).to(tl.int64)
        Rj = tl.load(base + j[:, None] * sk_i + idx[None, :] * sk_j, mask=both, other=0.0)
        Cj = tl.load(base + idx[None, :] * sk_i + j[:, None] * sk_j, mask=both, other=0.0)
        R = 0.5 * (Rj.to(tl.float64) + Cj.to(tl.float64))  # R[i] = row j[i] of ½(K + Kᵀ)
        s = tl.sum(R * C, axis=1)  # (K c_i)_j
        hit = idx[None, :] == j[:, None]
        k_jj = tl.sum(tl.where(hit, R, 0.0), axis=1)
        project = _and(_and(s < 0, j != idx), _and(k_jj > 0, valid))
        delta = tl.where(project, s / tl.where(project, k_jj, 1.0), 0.0)
        C = C - tl.where(hit, delta[:, None], 0.0)
    c = tl.sum(C, axis=0)
    tl.store(C_out + b * sc_b + idx, c.to(C_out.dtype.element_ty), mask=valid)


# ---------------------------------------------------------------------------------------------
# CAGrad
# ---------------------------------------------------------------------------------------------


@triton.jit
def _cagrad_step(b_d, A, C, q, phi, gamma_max):
    """argmin over γ ∈ [0, γ_max] of γ·bᵀd + φ·sqrt(q + 2γA + γ²C) (the reference's closed form)."""
    D = phi * phi * C - b_d * b_d
    ok = _and(C > 0, D > 0)
    root = tl.maximum(C * q - A * A, 0.0) / tl.where(ok, D, 1.0)
    c_safe = tl.where(C > 0, C, 1.0)
    gamma = -(A + b_d * tl.sqrt(root)) / c_safe
    gamma = tl.where(ok, gamma, gamma_max)
    gamma = tl.minimum(tl.maximum(gamma, 0.0), gamma_max)
    h0 = phi * tl.sqrt(tl.maximum(q, 0.0))
    h1 = gamma * b_d + phi * tl.sqrt(tl.maximum(q + 2 * gamma * A + gamma * gamma * C, 0.0))
    h2 = gamma_max * b_d + phi * tl.sqrt(
        tl.maximum(q + 2 * gamma_max * A + gamma_max * gamma_max * C, 0.0)
    )
    best = tl.where(h2 < h1, gamma_max, gamma)
    return tl.where(tl.minimum(h1, h2) < h0, best, 0.0)


@triton.jit
def _cagrad_kernel(
    K,
    W,
    T,
    c_value: tl.float64,
    norm_eps_value: tl.float64,
    rescale,
    max_iter,
    tol_value: tl.float64,
    ridge_value: tl.float64,
    smooth_value: tl.float64,
    tie_value: tl.float64,
    BT: tl.constexpr,
):
    # K: contiguous (B, T, T); W: contiguous (B, T).
    b, idx, valid, eye = _program(T, BT)
    cc = tl.full((), c_value, tl.float64)
    norm_eps = tl.full((), norm_eps_value, tl.float64)
    tol = tl.full((), tol_value, tl.float64)
    ridge = tl.full((), ridge_value, tl.float64)
    eps2 = tl.full((), smooth_value, tl.float64) * smooth_value
    Tf = T.to(tl.float64)

    Kd = _load_sym(K, b, T, idx, valid)
    trace = tl.sum(tl.sum(tl.where(eye, Kd, 0.0), axis=1), axis=0)
    small = trace < norm_eps
    Kn = tl.where(small, 0.0, Kd / tl.where(trace > 0, trace, 1.0))
    bv = tl.sum(Kn, axis=1) / Tf
    phi = cc * tl.sqrt(tl.maximum(tl.sum(tl.sum(Kn, axis=1), axis=0), 0.0)) / Tf
    dn = tl.sum(tl.where(eye, Kn, 0.0), axis=1)

    w = tl.where(valid, 1.0 / Tf, 0.0).to(tl.float64)
    g = _matvec(Kn, w)
    q = tl.maximum(tl.sum(w * g, axis=0), 0.0)
    stalled = q < 0  # False, as a tensor
    it = tl.where(phi > 0, 0, max_iter)
    while it < max_iter:
        rho = tl.sqrt(q + eps2)
        grad = bv + (phi / rho) * g
        s, g_s, a, g_a = _fw_vertices(grad, w, valid)
        gw = tl.sum(grad * w, axis=0)
        gap_fw = gw - g_s
        gap_aw = g_a - gw
        done = _or(gap_fw <= tol, stalled)

        # Away-step Frank-Wolfe step, exact line search.
        use_fw = gap_fw >= gap_aw
        v = tl.where(use_fw, s, a)
        g_v = _at(g, idx, v)
        b_v = _at(bv, idx, v)
        d_v = _at(dn, idx, v)
        bw = tl.sum(bv * w, axis=0)
        sign = tl.where(use_fw, 1.0, -1.0)
        b_d = sign * (b_v - bw)
        Ad = sign * (g_v - q)
        Cd = d_v - 2 * g_v + q
        gamma_max = _fw_gamma_max(w, idx, a, use_fw)
        gamma = _cagrad_step(b_d, Ad, Cd, q + eps2, phi, gamma_max)
        wf = _fw_step(w, idx, v, use_fw, gamma, gamma_max)

        # Face correction toward the stationary point of the face's affine hull.
        active = wf > 0
        both = _and(active[:, None], active[None, :])
        A = tl.where(both, Kn, 0.0) + tl.where(_and(eye, active[None, :]), ridge, 0.0)
        A, failed = _sweep(A, active, idx, eye, T, Tf < 0, False)  # Tf < 0: False, as a tensor
        Ainv = tl.where(both, -A, 0.0)  # (K_AA + δI)⁻¹ on the support
        z1 = tl.sum(tl.where(active[None, :], Ainv, 0.0), axis=1)
        z2 = tl.sum(Ainv * tl.where(active, bv, 0.0)[None, :], axis=1)
        s1 = tl.sum(z1, axis=0)
        fin = _and(_and(_not(failed), _all_finite(z1, valid)), _all_finite(z2, valid))
        fin = _and(_and(fin, tl.abs(s1) < float("inf")), s1 > 0)
        s1 = tl.where(fin, s1, 1.0)
        w0 = tl.where(fin, z1 / s1, 0.0)
        w1 = tl.where(fin, (tl.sum(z2, axis=0) / s1) * z1 - z2, 0.0)
        Kw0 = _matvec(Kn, w0)
        Kw1 = _matvec(Kn, w1)
        qa = tl.sum(w0 * Kw0, axis=0) + eps2
        qb = tl.sum(w0 * Kw1, axis=0)
        qc = tl.sum(w1 * Kw1, axis=0)
        disc = qb * qb - qa * (qc - phi * phi)
        lam = (-qb + tl.sqrt(tl.maximum(disc, 0.0))) / qa
        ok = _and(_and(fin, disc >= 0), _and(lam > 0, tl.abs(lam) < float("inf")))
        y = w0 + w1 / tl.where(ok, lam, 1.0)
        ok = _and(ok, _all_finite(y, valid))
        y = tl.where(ok, y, wf)
        moved, ok = _move_toward(wf, y, active, idx, ok)
        cut = tl.where(active, tl.maximum(y, 0.0), 0.0)
        cut_sum = tl.sum(cut, axis=0)
        cut = cut / tl.where(cut_sum > 0, cut_sum, 1.0)
        # Candidates: 0 the point after the Frank-Wolfe step, 1 moved, 2 cut.
        G0 = _matvec(Kn, wf)
        Q0 = tl.maximum(tl.sum(wf * G0, axis=0), 0.0)
        F0 = tl.sum(bv * wf, axis=0) + phi * tl.sqrt(Q0 + eps2)
        G1 = _matvec(Kn, moved)
        Q1 = tl.maximum(tl.sum(moved * G1, axis=0), 0.0)
        F1 = tl.sum(bv * moved, axis=0) + phi * tl.sqrt(Q1 + eps2)
        G2 = _matvec(Kn, cut)
        Q2 = tl.maximum(tl.sum(cut * G2, axis=0), 0.0)
        F2 = tl.sum(bv * cut, axis=0) + phi * tl.sqrt(Q2 + eps2)
        use_cut = _and(_and(ok, cut_sum > 0), F2 < F1)
        F_best = tl.where(use_cut, F2, F1)
        accept = _and(ok, F_best <= F0)
        w_new = tl.where(accept, tl.where(use_cut, cut, moved), wf)
        g_new = tl.where(accept, tl.where(use_cut, G2, G1), G0)
        q_new = tl.where(accept, tl.where(use_cut, Q2, Q1), Q0)
        n_changed = tl.sum(tl.where(w_new != w, 1, 0), axis=0)
        stalled = n_changed == 0
        w = tl.where(done, w, w_new)
        g = tl.where(done, g, g_new)
        q = tl.where(done, q, q_new)
        it = tl.where(done, max_iter, it + 1)

    # φ = 0: a linear problem; the uniform point of its optimal face.
    b_min = tl.min(tl.where(valid, bv, float("inf")), axis=0)
    ties = _and(valid, bv <= b_min + tie_value)
    w_lin = tl.where(ties, 1.0, 0.0) / tl.sum(tl.where(ties, 1.0, 0.0), axis=0)
    w = tl.where(phi > 0, w, w_lin)
    rho = tl.sqrt(tl.maximum(tl.sum(w * _matvec(Kn, w), axis=0), 0.0))
    keep = _and(rho >= norm_eps, rho > 0)
    bonus = tl.where(keep, phi / tl.where(keep, rho, 1.0), 0.0)
    out = tl.where(keep, 1.0 / Tf + bonus * w, 0.0)
    out = tl.where(rescale == 1, out / (1 + cc * cc), tl.where(rescale == 2, out / (1 + cc), out))
    tl.store(W + b * T + idx, out.to(W.dtype.element_ty), mask=valid)


# ---------------------------------------------------------------------------------------------
# Nash-MTL
# ---------------------------------------------------------------------------------------------


@triton.jit
def _nash_ray(Kn, x, Tf):
    """x·sqrt(T / xᵀKx) (the exact minimiser of F along the ray), x where xᵀKx ≤ 0."""
    quad = tl.sum(x * _matvec(Kn, x), axis=0)
    return x * tl.where(quad > 0, tl.sqrt(Tf / tl.where(quad > 0, quad, 1.0)), 1.0)


@triton.jit
def _nash_kernel(
    K,
    P,
    W,
    A_out,
    T,
    max_norm_value: tl.float64,
    max_iter,
    tol_value: tl.float64,
    BT: tl.constexpr,
):
    # K: contiguous (B, T, T); P, W, A_out: contiguous (B, T).
    b, idx, valid, eye = _program(T, BT)
    both = valid[:, None] & valid[None, :]
    tol = tl.full((), tol_value, tl.float64)
    max_norm = tl.full((), max_norm_value, tl.float64)
    Tf = T.to(tl.float64)

    Kd = _load_sym(K, b, T, idx, valid)
    Kn, _, scale = _max_diag_scaled(Kd, valid, eye)
    root = tl.sqrt(scale)
    prev = tl.load(P + b * T + idx, mask=valid, other=1.0).to(tl.float64)
    start = tl.where(_and(prev > 0, prev < float("inf")), prev, 1.0) * root
    a = _nash_ray(Kn, tl.where(valid, start, 1.0), Tf)
    done = Tf < 0  # False, as a tensor
    it = 0
    while it < max_iter:
        grad = tl.where(valid, _matvec(Kn, a) - 1.0 / a, 0.0)
        H = tl.where(both, Kn + tl.where(eye, 1.0 / (a * a)[None, :], 0.0), tl.where(eye, 1.0, 0.0))
        H, failed = _sweep(H, valid, idx, eye, T, Tf < 0, True)
        step = tl.sum(tl.where(both, H, 0.0) * grad[None, :], axis=1)  # −H⁻¹ grad
        dec = tl.sqrt(tl.maximum(-tl.sum(grad * step, axis=0), 0.0))
        good = _and(_and(_not(failed), tl.abs(dec) < float("inf")), _all_finite(step, valid))
        done = _and(good, dec <= tol)
        moved = _nash_ray(Kn, a + step / (1.0 + dec), Tf)
        n_bad = tl.sum(tl.where(_and(valid, _not(moved > 0)), 1, 0), axis=0)
        moved_ok = _and(_and(good, n_bad == 0), _all_finite(moved, valid))
        a = tl.where(_and(_not(done), moved_ok), moved, a)
        it = tl.where(done, max_iter, it + 1)
    alpha = tl.where(done, a / root, prev)
    length = tl.sqrt(tl.maximum(tl.sum(alpha * _matvec(Kd, alpha), axis=0), 0.0))
    over = _and(max_norm > 0, length > max_norm)
    weights = alpha * tl.where(over, max_norm / tl.where(over, length, 1.0), 1.0)
    tl.store(W + b * T + idx, weights.to(W.dtype.element_ty), mask=valid)
    tl.store(A_out + b * T + idx, alpha.to(A_out.dtype.element_ty), mask=valid)


# ---------------------------------------------------------------------------------------------
# Launchers (the backend contracts of mtl_fast._core.contracts)
# ---------------------------------------------------------------------------------------------


def _num_warps(bt: int) -> int:
    # The tiles are (BT, BT) fp64, as in the min-norm kernel (mtl_fast.kernels.triton.min_norm):
    # one warp up to BT = 16, four at 32, sixteen at 64 (python -m mtl_fast.kernels.triton.aot
    # reports registers and spills per specialization).
    return 1 if bt <= 16 else 4 if bt == 32 else 16


def _check_tasks(op: str, T: int) -> int:
    if T > MAX_TASKS:
        raise ValueError(
            f"backend='triton' {op} supports T ≤ {MAX_TASKS} tasks, got T={T}; "
            "use backend='reference' or 'cpu' for larger problems"
        )
    return max(pow2(T), 2)


def pcgrad(K: torch.Tensor, order: torch.Tensor, /) -> torch.Tensor:
    """(B, T, T) fp32/fp64 K, (B, T, T) int64 orders → (B, T) PCGrad weights in K's dtype."""
    B, T, _ = K.shape
    bt = _check_tasks("pcgrad", T)
    out = torch.empty(B, T, dtype=K.dtype, device=K.device)
    _pcgrad_kernel[(B,)](
        K,
        order,
        out,
        T,
        K.stride(0),
        K.stride(1),
        K.stride(2),
        order.stride(0),
        order.stride(1),
        order.stride(2),
        out.stride(0),
        BT=bt,
        num_warps=_num_warps(bt),
    )
    return out


def cagrad(K: torch.Tensor, hyper: CAGradHyper, /) -> torch.Tensor:
    """(B, T, T) fp32/fp64 K → (B, T) CAGrad weights in K's dtype; T ≤ ``MAX_TASKS``.

    ``hyper.sync_free`` changes nothing: the kernel never reads back to the host, and each
    problem stops on its own once converged.
    """
    B, T, _ = K.shape
    bt = _check_tasks("cagrad", T)
    out = torch.empty(B, T, dtype=K.dtype, device=K.device)
    _cagrad_kernel[(B,)](
        K.contiguous(),
        out,
        T,
        float(hyper.c),
        float(hyper.norm_eps),
        int(hyper.rescale),
        int(hyper.max_iter),
        float(hyper.tol),
        CAGRAD_FACE_RIDGE,
        CAGRAD_SMOOTH,
        CAGRAD_TIE,
        BT=bt,
        num_warps=_num_warps(bt),
    )
    return out


def nash_mtl(
    K: torch.Tensor, prev_alpha: torch.Tensor, hyper: NashMTLHyper, /
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, T) fp32/fp64 K, (B, T) fp64 state → (weights, alpha) in K's dtype; T ≤ 64.

    ``hyper.sync_free`` changes nothing (see :func:`cagrad`).
    """
    B, T, _ = K.shape
    bt = _check_tasks("nash_mtl", T)
    weights = torch.empty(B, T, dtype=K.dtype, device=K.device)
    alpha = torch.empty(B, T, dtype=K.dtype, device=K.device)
    prev = prev_alpha.to(torch.float64).contiguous()
    _nash_kernel[(B,)](
        K.contiguous(),
        prev,
        weights,
        alpha,
        T,
        float(hyper.max_norm),
        int(hyper.max_iter),
        float(hyper.tol),
        BT=bt,
        num_warps=_num_warps(bt),
    )
    return weights, alpha
