r"""Reference batched dual-cone projection: the QP behind UPGrad and DualProj.

For a Gram matrix G = J Jᵀ of T task gradients (the rows of J) and a weight vector u, the
projection of Jᵀu onto the dual cone {x : Jx ≥ 0} of the rows of J is Jᵀv with

    v = argmin_v vᵀ G̃ v   subject to   v ≥ u   (element-wise),                           (QP)

where G̃ is G normalised by its trace and regularised (Quinton & Rey, "Jacobian Descent for
Multi-Objective Optimization", 2024, Proposition 1; https://arxiv.org/abs/2406.16232):
G̃ = sym(G) / tr(G) + reg_eps·I, and G̃ = reg_eps·I when tr(G) < norm_eps (TorchJD 0.18's
``QuadprogProjector``). Each row u of U is projected independently against its problem's G̃.

Optimality (KKT). With λ = G̃v (half the multiplier of v ≥ u), v is optimal if and only if

    v ≥ u,   G̃v ≥ 0,   (G̃v)_j (v_j − u_j) = 0 for every j:

a linear complementarity problem in x = v − u with a positive definite matrix when
reg_eps > 0, so the solution is unique.

Algorithm: block principal pivoting (Júdice & Pires, Computers & OR 21(5), 1994), i.e. the
primal-dual active set / semismooth Newton method on the LCP (Hintermüller, Ito & Kunisch, SIAM
J. Optim. 13(3), 2002), with the finite-termination backup rule of Kim & Park (SIAM J. Sci.
Comput. 33(6), 2011). Each row keeps a free set F (tasks whose constraint is released:
(G̃v)_F = 0) and its complement A (v_A = u_A). One iteration:

1. Solve the complementary basic solution: v_A = u_A, G̃_FF v_F = −G̃_FA u_A (one Cholesky; in
   the batched form the masked T×T system [G̃_FF 0; 0 I]).
2. λ = G̃v. Infeasible set V = {j ∈ F : v_j − u_j < −tol·s} ∪ {j ∈ A : λ_j < −tol·s·G̃_jj},
   s = max(‖u‖∞, ‖v‖∞). V = ∅: v is optimal — the stopping rule; the other KKT conditions hold
   by construction, so it is a scale-free KKT test. Scaling λ_j by G̃_jj makes both tests bound
   the error in v_j by about tol·s (a multiplier −ε on a bound moves v_j by ε/G̃_jj once
   released) while staying ~100× above the rounding noise of λ_j (≈ T·eps·s·(G̃_jj·max G̃)^½)
   at T = 128 and the condition number 1e4 that reg_eps = 1e-4 allows.
3. Exchange: swap every index of V between F and A while |V| keeps decreasing, or for at most
   ``BACKUP_EXCHANGES`` non-improving iterations in a row; otherwise swap one index of V: the
   most violated one for the first T single exchanges of the row, then the largest one
   (Murty's rule, finite for P-matrices, which bounds the whole method). Most-violated first cut
   the measured worst case on rank-deficient Grams from 64+ to 41 iterations.

The start F = {j : (G̃u)_j < −tol·‖u‖∞·G̃_jj} is the exchange from v = u, so a row whose u is
already optimal (no conflict: the common case of aligned tasks) costs one matrix-vector product
and no factorisation. Measured over ~200k rows (T from 2 to 128, seven Gram families): 0.1 to 6
factorisations per row on average, 99th percentile ≤ 17, at most 41 (rank-deficient Grams have
the tail); hence the default budget of 64. First-order methods (projected or accelerated
gradient, primal or dual, coordinate descent, ADMM) need 10² to 10⁵ iterations on the
ill-conditioned Grams that the regularisation allows and still miss the quadprog solution by up
to 3e-7 at a 1e-10 KKT residual (docs/upgrad.md).

A failed Cholesky — a pivot ≤ ``PIVOT_TOL`` times its diagonal entry, only possible when
reg_eps is 0 or tiny and G singular or indefinite — keeps the previous iterate and retries with
a ridge of ``FAIL_RIDGE``·max_k G̃_kk on the free block, grown ×100 per failure, so the result
is finite for finite input. A problem whose G (or a row
whose u) holds NaN/Inf gets NaN rows. The final W is clamped to W ≥ U (exact primal
feasibility; it moves nothing by more than tol·s once converged).

In the ``sync_free`` form the loop runs exactly ``max_iter`` iterations under per-row masks, with
no data-dependent Python control flow and no host read-back (CUDA-graph capturable); otherwise
it stops when every row has converged and solves only the unconverged rows each iteration.
"""

from __future__ import annotations

import torch

from mtl_fast._core.contracts import DualConeHyper
from mtl_fast._core.dual_cone_problem import normalized_gram

# Full exchanges allowed without reducing the number of infeasible indices (Kim & Park's p̄).
BACKUP_EXCHANGES = 3
# First ridge (× max_k G̃_kk) put on a free block whose Cholesky failed; ×100 on each failure.
FAIL_RIDGE = 1e-12
# A Cholesky pivot at most this fraction of its diagonal entry counts as a failure: the rounding
# noise of a singular block is ~k·ε ≈ 1e-14 at k = 128, while a genuine pivot with the default
# reg_eps = 1e-4 is ≥ 1e-4 of it. Without the test, whether a singular block (reg_eps = 0) fails
# would be decided by the sign of rounding noise, and its solve would be noise.
PIVOT_TOL = 1e-12


def _bpp(
    u: torch.Tensor, G: torch.Tensor, *, max_iter: int, tol: float, sync_free: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Block principal pivoting on every row of every problem.

    Args:
        u: (N, R, T) float64 rows.
        G: (N, T, T) float64 G̃ (already normalised and regularised).

    Returns:
        v (N, R, T) float64 with v ≥ u; the factorisations used per row (N, R) int64; whether
        each row met the stopping rule (N, R) bool.
    """
    N, R, T = u.shape
    dev = u.device
    M = N * R
    uf = u.reshape(M, T)
    prob = torch.arange(N, device=dev).repeat_interleave(R)
    gmax = G.diagonal(dim1=-2, dim2=-1).amax(dim=-1)[prob]  # (M,)
    s_u = uf.abs().amax(dim=-1)
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    one = torch.ones((), dtype=torch.float64, device=dev)
    gdiag = G.diagonal(dim1=-2, dim2=-1)[prob]  # (M, T)

    def gram_of(rows: torch.Tensor | None) -> torch.Tensor:
        """G̃ of the given flat rows: (N, 1, T, T) for all rows (broadcast, no copy), else
        (m, T, T), or (1, T, T) for one problem."""
        if rows is None:
            return G[:, None]
        return G if N == 1 else G[prob[rows]]

    def matvec(Gr: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """G̃x for flat rows x (m, T); G̃ is symmetric, so rows times G̃."""
        if Gr.dim() == 4:  # all rows, grouped by problem: one batched GEMM
            return torch.bmm(x.reshape(N, R, T), G).reshape(-1, T)
        if Gr.shape[0] == 1 and x.shape[0] != 1:
            return x @ Gr[0]
        return torch.bmm(x[:, None, :], Gr)[:, 0, :]

    # Iteration 0: v = u, every bound active; λ = G̃u.
    lam0 = matvec(gram_of(None), uf)
    F = lam0 < -tol * s_u[:, None] * gdiag
    nbad = F.sum(dim=-1)
    done = nbad == 0
    best = nbad.clone()
    budget = torch.full_like(nbad, BACKUP_EXCHANGES)
    singles = torch.zeros_like(nbad)
    v = uf.clone()
    ridge = torch.zeros(M, dtype=torch.float64, device=dev)
    iters = torch.zeros(M, dtype=torch.int64, device=dev)
    col = torch.arange(T, device=dev)

    for _ in range(max_iter):
        if sync_free:
            idx = None
            ui, Fi, vi, di = uf, F, v, gdiag
            gi, si, ri, ki, bdi, sgi = gmax, s_u, ridge, best, budget, singles
            live = ~done
        else:
            if bool(done.all()):
                break
            idx = torch.nonzero(~done).squeeze(-1)
            ui, Fi, vi, di = uf[idx], F[idx], v[idx], gdiag[idx]
            gi, si, ri, ki, bdi = gmax[idx], s_u[idx], ridge[idx], best[idx], budget[idx]
            sgi = singles[idx]
            live = torch.ones_like(ki, dtype=torch.bool)
        Gr = gram_of(idx)
        m = Fi.shape[0]

        # 1. Complementary basic solution: [G̃_FF 0; 0 I] v = [−G̃_FA u_A; u_A].
        FF = Fi[:, :, None] & Fi[:, None, :]
        if Gr.dim() == 4:
            system = torch.where(FF.view(N, R, T, T), Gr, zero).view(m, T, T)
        else:
            system = torch.where(FF, Gr, zero)
        system.diagonal(dim1=-2, dim2=-1).copy_(torch.where(Fi, di + ri[:, None], one))
        uA = torch.where(Fi, zero, ui)
        rhs = torch.where(Fi, -matvec(Gr, uA), ui)
        L, info = torch.linalg.cholesky_ex(system)
        x = torch.cholesky_solve(rhs[:, :, None], L)[..., 0]
        pivots = L.diagonal(dim1=-2, dim2=-1).square()
        ok = (info == 0) & (pivots > PIVOT_TOL * system.diagonal(dim1=-2, dim2=-1)).all(dim=-1)
        v_new = torch.where(Fi & ok[:, None], x, ui)

        # 2. Multipliers and the infeasible set.
        lam = matvec(Gr, v_new)
        sv = torch.maximum(si, v_new.abs().amax(dim=-1))
        violation = torch.where(Fi, (ui - v_new) / sv[:, None], -lam / (sv[:, None] * di))
        bad = violation > tol
        nb = bad.sum(dim=-1)

        # 3. Exchange (Júdice & Pires with Kim & Park's backup rule). A single exchange swaps
        # the most violated index for the first T of them, then the largest index (Murty).
        improve = nb < ki
        full = improve | (bdi > 0)
        worst = torch.where(bad, violation, -1.0).argmax(dim=-1)
        largest = (T - 1) - torch.flip(bad, dims=[-1]).to(torch.int64).argmax(dim=-1)
        pick = torch.where(sgi < T, worst, largest)
        single = bad & (col[None, :] == pick[:, None])
        F_new = Fi ^ torch.where(full[:, None], bad, single)
        budget_new = torch.where(improve, BACKUP_EXCHANGES, torch.where(full, bdi - 1, bdi))
        best_new = torch.where(improve, nb, ki)
        singles_new = sgi + (~full).to(torch.int64)

        step = live & ok
        fail = live & ~ok
        conv = step & (nb == 0)
        F_out = torch.where((step & ~conv)[:, None], F_new, Fi)
        v_out = torch.where(step[:, None], v_new, vi)
        ridge_out = torch.where(fail, torch.maximum(100.0 * ri, FAIL_RIDGE * gi), ri)
        best_out = torch.where(step, best_new, ki)
        budget_out = torch.where(step, budget_new, bdi)
        singles_out = torch.where(step & ~conv, singles_new, sgi)
        if idx is None:
            F, v, ridge, best, budget = F_out, v_out, ridge_out, best_out, budget_out
            singles = singles_out
            iters = iters + live.to(torch.int64)
            done = done | conv
        else:
            F[idx], v[idx], ridge[idx] = F_out, v_out, ridge_out
            best[idx], budget[idx], singles[idx] = best_out, budget_out, singles_out
            iters[idx] += 1
            done[idx] = conv
    v = torch.maximum(v, uf)  # exact primal feasibility (a no-op up to tol once converged)
    # Non-finite input gives NaN rows (rather than the u that the comparisons would let pass).
    finite = torch.isfinite(G).all(dim=-1).all(dim=-1)[prob] & torch.isfinite(uf).all(dim=-1)
    v = torch.where(finite[:, None], v, torch.nan)
    return v.reshape(N, R, T), iters.reshape(N, R), (done & finite).reshape(N, R)


def project(
    U: torch.Tensor, G: torch.Tensor, hyper: DualConeHyper, /
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The projection weights with the iteration counts and convergence flags.

    Args:
        U: (B, R, T) rows, any float dtype.
        G: (B, T, T) Gram matrices, any float dtype.
        hyper: the normalisation of G (see the module docstring), the budget, the stopping
            rule's tolerance and ``sync_free`` (run exactly ``max_iter`` iterations with masks
            and no host read-back).

    Returns:
        W (B, R, T) float64 with W ≥ U; factorisations per row (B, R) int64; whether each row
        met the stopping rule within ``max_iter`` (B, R) bool.
    """
    Gn = normalized_gram(G, hyper.norm_eps, hyper.reg_eps)
    Ud = U.to(torch.float64)
    if Ud.numel() == 0:
        shape = Ud.shape[:-1]
        return (
            Ud.clone(),
            torch.zeros(shape, dtype=torch.int64, device=U.device),
            torch.ones(shape, dtype=torch.bool, device=U.device),
        )
    return _bpp(Ud, Gn, max_iter=hyper.max_iter, tol=hyper.tol, sync_free=hyper.sync_free)


def dual_cone(U: torch.Tensor, G: torch.Tensor, hyper: DualConeHyper, /) -> torch.Tensor:
    """Projection weights W[b, r] = argmin_{v ≥ U[b, r]} vᵀG̃[b]v, batched: U (B, R, T) and
    G (B, T, T) float32/float64 → (B, R, T) in G's dtype, W ≥ U (:func:`project`)."""
    W, _, _ = project(U, G, hyper)
    return W.to(G.dtype)
