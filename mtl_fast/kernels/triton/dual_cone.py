"""Batched dual-cone projection (UPGrad / DualProj): one program per (problem, row), fp64.

The algorithm, exchange rules and stopping rule are the reference's
(:mod:`mtl_fast.kernels.reference.dual_cone`), iterate for iterate: G̃ = sym(G) / tr(G) +
reg_eps·I (reg_eps·I below norm_eps), start from the exchange at v = u, then block principal
pivoting with Kim & Park's backup rule until no free coordinate undershoots u by tol·s and no
multiplier (G̃v)_j is below −tol·s·G̃_jj. Everything is fp64 whatever the input dtype.

Per program: the G̃ tile (T×T fp64) and the row's vectors u, v, λ and the free set F live in
registers. Each iteration solves the masked system [G̃_FF 0; 0 I] v = [−G̃_FA u_A; u_A] with the
symmetric sweep operator (Goodnight, 1979) over the free indices only, in ascending order — |F|
rank-1 updates of the tile, one row reduction per pivot, no triangular solves; afterwards the
F×F block holds −G̃_FF⁻¹. Its pivots are those of the reference's Cholesky (squared), so the
same test fails it (a pivot ≤ ``PIVOT_TOL`` times its diagonal entry): the iterate is kept and
the ridge grows (``FAIL_RIDGE``, ×100 per failure).

Differences that do not change the result beyond rounding: a row stops as soon as it meets the
stopping rule, inside its own program (a data-dependent loop in the kernel is no host sync), so
``sync_free`` is always honoured and the launch can be graph-captured; the sweep instead of a
Cholesky, followed by two steps of iterative refinement (the explicit inverse alone leaves a
residual ∝ cond(G̃_FF)·ε that the stopping rule, which takes (G̃v)_F = 0 for granted, would not
see: with reg_eps = 0 on a singular Gram it was 5e-6). T is limited to ``MAX_TASKS`` (the tile
lives in registers: 32 KB at T = 64); above, the dispatcher runs the sync-free reference
(batched Cholesky) on the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mtl_fast._core.contracts import DualConeHyper
from mtl_fast.kernels.reference.dual_cone import BACKUP_EXCHANGES, FAIL_RIDGE, PIVOT_TOL
from mtl_fast.kernels.triton.common import pow2

MAX_TASKS = 64


@triton.jit
def _at(x, idx, k):
    """x[k] of a (BT,) tensor as a scalar."""
    return tl.sum(tl.where(idx == k, x, 0), axis=0)


@triton.jit
def _matvec(A, x):
    """A x for a symmetric (BT, BT) A and a (BT,) x."""
    return tl.sum(A * x[None, :], axis=1)


# Sets are int32 0/1 vectors and every boolean combination a tl.where: Triton's interpreter
# stores the result of a float comparison as floats, on which & | ~ fail; compiled, the same.
@triton.jit
def _dual_cone_kernel(
    U,
    G,
    W,
    R,
    T,
    su_b,
    su_r,
    su_t,
    sg_b,
    sg_i,
    sg_j,
    sw_b,
    sw_r,
    max_iter,
    norm_eps_value: tl.float64,
    reg_eps_value: tl.float64,
    tol_value: tl.float64,
    fail_ridge_value: tl.float64,
    pivot_tol_value: tl.float64,
    BT: tl.constexpr,
    BACKUP: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // R
    r = pid % R
    idx = tl.arange(0, BT)
    valid = idx < T
    grid_ok = (idx[:, None] < T) & (idx[None, :] < T)
    eye = idx[:, None] == idx[None, :]
    tol = tl.full((), tol_value, tl.float64)
    reg_eps = tl.full((), reg_eps_value, tl.float64)
    fail_ridge = tl.full((), fail_ridge_value, tl.float64)

    # Prologue: G̃ = sym(G) / tr(G) + reg_eps·I (reg_eps·I when tr(G) < norm_eps), fp64; the
    # padding outside T×T is the identity so that it never pivots on zero.
    base = G + b * sg_b
    Gij = tl.load(base + idx[:, None] * sg_i + idx[None, :] * sg_j, mask=grid_ok, other=0.0)
    Gji = tl.load(base + idx[None, :] * sg_i + idx[:, None] * sg_j, mask=grid_ok, other=0.0)
    Gs = 0.5 * (Gij.to(tl.float64) + Gji.to(tl.float64))
    n_bad_g = tl.sum(tl.sum(tl.where(tl.abs(Gs) < float("inf"), 0, 1), axis=1), axis=0)
    trace = tl.sum(tl.sum(tl.where(eye, Gs, 0.0), axis=1), axis=0)
    small = trace < norm_eps_value
    Gn = tl.where(small, 0.0, Gs / tl.where(small, 1.0, trace))
    Gn = Gn + tl.where(eye, tl.where(valid[:, None], reg_eps, 1.0), 0.0)
    d = tl.sum(tl.where(eye, Gn, 0.0), axis=1)
    gmax = tl.max(tl.where(valid, d, 0.0), axis=0)

    u = tl.load(U + b * su_b + r * su_r + idx * su_t, mask=valid, other=0.0).to(tl.float64)
    n_bad_u = tl.sum(tl.where(tl.abs(u) < float("inf"), 0, 1), axis=0)
    finite = (n_bad_g + n_bad_u) == 0
    s_u = tl.max(tl.abs(u), axis=0)

    # Iteration 0: v = u, every bound active; λ = G̃u.
    lam0 = _matvec(Gn, u)
    F = tl.where(lam0 < -tol * s_u * d, 1, 0)
    F = tl.where(valid, F, 0)
    nbad = tl.sum(F, axis=0)
    best = nbad
    budget = nbad * 0 + BACKUP
    singles = nbad * 0
    v = u
    ridge = s_u * 0.0
    it = tl.where(finite & (nbad > 0), 0, max_iter)
    while it < max_iter:
        # 1. Complementary basic solution: [G̃_FF 0; 0 I] v = [−G̃_FA u_A; u_A], by sweeping the
        # free pivots of the masked system (afterwards its F×F block is −G̃_FF⁻¹).
        FF = (F[:, None] * F[None, :]) > 0
        diag0 = tl.where(F > 0, d + ridge, 1.0)
        A = tl.where(eye, diag0[:, None], tl.where(FF, Gn, 0.0))
        uA = tl.where(F > 0, 0.0, u)
        rhs = tl.where(F > 0, -_matvec(Gn, uA), u)
        failed = it < 0  # a scalar False
        for k in range(0, T):
            if _at(F, idx, k) > 0:
                row = tl.sum(tl.where(idx[:, None] == k, A, 0.0), axis=0)  # = column k
                dk = _at(row, idx, k)
                # The Cholesky pivot test of the reference (a NaN pivot fails too).
                failed = tl.where(dk > pivot_tol_value * _at(diag0, idx, k), failed, True)
                dk = tl.where(dk > 0, dk, 1.0)
                rk = tl.where(idx == k, 0.0, row)
                A = A - (rk[:, None] * rk[None, :]) / dk
                A = tl.where(idx[:, None] == k, rk[None, :] / dk, A)
                A = tl.where(idx[None, :] == k, rk[:, None] / dk, A)
                A = tl.where(eye & (idx[:, None] == k), -1.0 / dk, A)
        inv = tl.where(FF, A, 0.0)  # −(G̃_FF + ridge·I)⁻¹, zero outside F×F
        x = -tl.sum(inv * rhs[None, :], axis=1)
        # Two steps of iterative refinement with the same inverse: a solve through an explicit
        # inverse is not backward stable (its residual grows with cond(G̃_FF)·ε, where the
        # reference's Cholesky solve keeps it at ε), and the stopping rule trusts (G̃v)_F = 0.
        # Each step multiplies the error by ~cond·ε (≤ 1e-12 at the default reg_eps = 1e-4).
        for _ in tl.static_range(2):
            res = tl.where(F > 0, rhs - (_matvec(Gn, x) + ridge * x), 0.0)
            x = x - tl.sum(inv * res[None, :], axis=1)
        ok = tl.where(failed, False, True)
        v_new = tl.where((F > 0) & ok, x, u)

        # 2. Multipliers and the infeasible set.
        lam = _matvec(Gn, v_new)
        sv = tl.maximum(s_u, tl.max(tl.abs(v_new), axis=0))
        violation = tl.where(F > 0, (u - v_new) / sv, -lam / (sv * d))
        bad = tl.where(valid & (violation > tol), 1, 0)
        nb = tl.sum(bad, axis=0)

        # 3. Exchange (Júdice & Pires with Kim & Park's backup rule): every infeasible index
        # while their number falls (or for BACKUP non-improving iterations), else one: the most
        # violated for the first T single exchanges of the row, then the largest (Murty).
        improve = nb < best
        full = tl.where(improve, True, budget > 0)
        worst = tl.argmax(tl.where(bad > 0, violation, -1.0), axis=0)
        largest = tl.max(tl.where(bad > 0, idx, -1), axis=0)
        pick = tl.where(singles < T, worst, largest)
        flip = tl.where(full, bad, tl.where((bad > 0) & (idx == pick), 1, 0))
        F_new = tl.where(flip > 0, 1 - F, F)
        conv = tl.where(ok, nb == 0, False)
        move = tl.where(ok, tl.where(conv, False, True), False)
        F = tl.where(move, F_new, F)
        v = tl.where(ok, v_new, v)
        ridge = tl.where(ok, ridge, tl.maximum(100.0 * ridge, fail_ridge * gmax))
        budget = tl.where(ok, tl.where(improve, BACKUP, tl.where(full, budget - 1, budget)), budget)
        best = tl.where(ok & improve, nb, best)
        singles = tl.where(move & tl.where(full, False, True), singles + 1, singles)
        it = tl.where(conv, max_iter, it + 1)
    out = tl.maximum(v, u)  # exact primal feasibility
    out = tl.where(finite, out, float("nan"))
    tl.store(W + b * sw_b + r * sw_r + idx, out.to(W.dtype.element_ty), mask=valid)


def _num_warps(bt: int) -> int:
    # From ptxas for sm_90 (python -m mtl_fast.kernels.triton.aot): no spills up to BT = 16 at one
    # warp and BT = 32 at four (two warps spill 400 B there); BT = 64 (two 32 KB fp64 tiles)
    # spills at any width: 416 B of stack at 8 warps, 328 B at 16, 288 B at 32. 16 until a GPU
    # timing decides (as for the min-norm kernel).
    return 1 if bt <= 16 else 4 if bt == 32 else 16


def dual_cone(U: torch.Tensor, G: torch.Tensor, hyper: DualConeHyper, /) -> torch.Tensor:
    """U: (B, R, T), G: (B, T, T) fp32/fp64 → (B, R, T) projection weights in G's dtype;
    T ≤ ``MAX_TASKS``.

    ``hyper.sync_free`` changes nothing: the kernel never reads back to the host, and each row
    stops on its own once it meets the stopping rule.
    """
    B, R, T = U.shape
    if T > MAX_TASKS:
        raise ValueError(
            f"backend='triton' dual_cone supports T ≤ {MAX_TASKS} tasks, got T={T}; "
            "use backend='reference' for larger problems"
        )
    W = torch.empty(B, R, T, dtype=G.dtype, device=G.device)
    if W.numel() == 0:
        return W
    bt = max(pow2(T), 2)
    _dual_cone_kernel[(B * R,)](
        U,
        G,
        W,
        R,
        T,
        U.stride(0),
        U.stride(1),
        U.stride(2),
        G.stride(0),
        G.stride(1),
        G.stride(2),
        W.stride(0),
        W.stride(1),
        int(hyper.max_iter),
        float(hyper.norm_eps),
        float(hyper.reg_eps),
        float(hyper.tol),
        FAIL_RIDGE,
        PIVOT_TOL,
        BT=bt,
        BACKUP=BACKUP_EXCHANGES,
        num_warps=_num_warps(bt),
    )
    return W
