"""Reference Gram-space aggregators: PCGrad, IMTL-G, CAGrad, Nash-MTL, Aligned-MTL, ConFIG.

Each method chooses task coefficients c from the T×T Gram K = JJᵀ alone; the update is
d = Jᵀc. The functions here take the backend calling convention (see
:mod:`mtl_fast._core.contracts`): K is an already-validated (B, T, T) fp32/fp64 batch, vector
arguments are (B, T) fp64 (``order``: (B, T, T) int64), and the result is (B, T) in K's dtype.
Everything is computed in fp64 on K symmetrised as ½(K + Kᵀ) (exact for a symmetric K).

The iterative ones (CAGrad's inner problem, Nash-MTL's equation) advance all problems together
under per-problem masks; with ``sync_free`` they run exactly ``max_iter`` iterations with no
data-dependent Python control flow and no read-back of a device value (``solve_ex`` and
``cholesky_ex`` without error checks), and a problem that is done is frozen bit for bit, so the
sync-free result equals the early-exit one. PCGrad is a fixed T-step loop, sync-free by
construction. IMTL-G, Aligned-MTL and ConFIG call ``torch.linalg.eigh``, which on a CUDA device
synchronises with the host (its error check): they are closed-form but not capturable here; the
compiled CPU backend uses a fixed-sweep Jacobi eigensolver instead.

The formulas, the deviations from TorchJD 0.18, LibMTL and the official code, and the measured
agreement are in docs/aggregators.md; the public functions are in
:mod:`mtl_fast.ops.aggregators`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast._core.contracts import (
    ALIGNED_MTL_SCALE_MODES,
    AlignedMTLHyper,
    CAGradHyper,
    NashMTLHyper,
    PinvHyper,
)
from mtl_fast.kernels.reference.min_norm import away_step_limit, move_within_simplex, vertex_step

# IMTL-G: the weights are zero when |Σv| falls below this (TorchJD's constant, applied here to
# K / max_i K_ii so that the rule does not depend on the scale of K).
IMTLG_SUM_EPS = 1e-12
# CAGrad: ridge of a face system, relative to trace K = 1.
CAGRAD_FACE_RIDGE = 1e-12
# CAGrad: ‖g_w‖ is smoothed to sqrt(‖g_w‖² + ε²) inside the solver (trace K = 1). This moves the
# optimum by at most φ·ε and lets Frank-Wolfe steps leave the kink of ‖g_w‖ at g_w = 0, where
# they stalled on the true objective (an "opposite" T = 5 problem stopped at f = 0, optimum
# −1.1e-3).
CAGRAD_SMOOTH = 1e-12
# CAGrad's φ = 0 case (a linear problem): tasks within this of min_i b_i share the weight.
CAGRAD_TIE = 1e-12
SCALE_MODES = ALIGNED_MTL_SCALE_MODES

_F64 = torch.float64


def _sym64(K: Tensor) -> Tensor:
    Kd = K.to(_F64)
    return 0.5 * (Kd + Kd.mT)


def _max_diag(Kd: Tensor) -> Tensor:
    """max_i K_ii per problem, 1 where it is not positive (so that K / it is always defined)."""
    m = Kd.diagonal(dim1=-2, dim2=-1).amax(dim=-1)
    return torch.where(m > 0, m, torch.ones_like(m))


def _eigh(Kd: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric batch; empty batches allowed."""
    if Kd.shape[0] == 0:
        return Kd.new_zeros(Kd.shape[:-1]), Kd.clone()
    lam, V = torch.linalg.eigh(Kd)
    return lam, V


def _in_basis(V: Tensor, x: Tensor) -> Tensor:
    """Vᵀx, batched: (B, T, T), (B, T) → (B, T)."""
    return torch.einsum("bji,bj->bi", V, x)


def _from_basis(V: Tensor, y: Tensor) -> Tensor:
    """Vy, batched."""
    return torch.einsum("bij,bj->bi", V, y)


def _quad(K: Tensor, x: Tensor) -> Tensor:
    """xᵀKx, batched."""
    return torch.einsum("bi,bij,bj->b", x, K, x)


# ----------------------------------------------------------------------------------------------
# PCGrad
# ----------------------------------------------------------------------------------------------


def pcgrad(K: Tensor, order: Tensor, /) -> Tensor:
    """PCGrad weights (Yu et al., NeurIPS 2020) in coefficient space, all T task loops at once.

    For each task i: c_i = e_i; for j in order[i] (skipping j = i): s = (K c_i)_j, and if s < 0,
    c_ij −= s / K_jj. Then c = Σ_i c_i. A task with K_jj = 0 is never projected against (its row
    of K is 0, so s = 0 anyway, up to underflow).

    Args:
        K: (B, T, T) fp32/fp64 Gram matrices.
        order: (B, T, T) int64; row i is a permutation of range(T), task i's projection order.

    Returns:
        (B, T) in K's dtype.
    """
    Kd = _sym64(K)
    B, T, _ = Kd.shape
    device = Kd.device
    diag = Kd.diagonal(dim1=-2, dim2=-1)
    task = torch.arange(T, device=device).expand(B, T)
    C = torch.eye(T, dtype=_F64, device=device).expand(B, T, T).clone()  # row i = c_i
    for k in range(T):
        j = order[:, :, k]  # (B, T): the task that task i meets at step k
        rows = Kd.gather(1, j.unsqueeze(-1).expand(B, T, T))  # rows[b, i] = K[b, j[b, i]]
        s = (rows * C).sum(dim=-1)  # (K c_i)_j
        k_jj = diag.gather(1, j)
        project = (s < 0) & (j != task) & (k_jj > 0)
        delta = torch.where(project, s / torch.where(project, k_jj, torch.ones_like(k_jj)), 0.0)
        C.scatter_add_(2, j.unsqueeze(-1), -delta.unsqueeze(-1))
    return C.sum(dim=1).to(K.dtype)


# ----------------------------------------------------------------------------------------------
# IMTL-G
# ----------------------------------------------------------------------------------------------


def imtlg(K: Tensor, hyper: PinvHyper, /) -> Tensor:
    """IMTL-G weights (Liu et al., ICLR 2021; TorchJD's pseudo-inverse form).

    v = K⁺·sqrt(diag K) on K̂ = K / max_i K_ii, with eigenvalues |λ| ≤ rtol·max|λ| treated as
    zero; c = v / Σv, and c = 0 when |Σv| < 1e-12.

    Args:
        K: (B, T, T) fp32/fp64.
        hyper: the pseudo-inverse cut-off rtol.

    Returns:
        (B, T) in K's dtype.
    """
    Kd = _sym64(K)
    Kn = Kd / _max_diag(Kd)[:, None, None]
    lam, V = _eigh(Kn)
    sqrt_diag = Kn.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    mag = lam.abs()
    keep = mag > hyper.rtol * mag.amax(dim=-1, keepdim=True)
    inv = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)), 0.0)
    v = _from_basis(V, inv * _in_basis(V, sqrt_diag))
    total = v.sum(dim=-1, keepdim=True)
    ok = total.abs() >= IMTLG_SUM_EPS
    c = torch.where(ok, v / torch.where(ok, total, torch.ones_like(total)), 0.0)
    return c.to(K.dtype)


# ----------------------------------------------------------------------------------------------
# Aligned-MTL
# ----------------------------------------------------------------------------------------------


def aligned_mtl(K: Tensor, pref: Tensor, hyper: AlignedMTLHyper, /) -> Tensor:
    """Aligned-MTL weights (Senushkin et al., CVPR 2023; TorchJD's form): c = B·p.

    On K̂ = K / max_i K_ii = VΛVᵀ, keep λ > rtol·max λ (r of them); σ is the smallest kept
    ("min"), their lower median ("median") or mean ("rmse"); B = sqrt(σ)·V_r Λ_r^(-1/2) V_rᵀ.
    B is scale-free. When r = 0 (K = 0), B = I and c = p.

    Args:
        K: (B, T, T) fp32/fp64.
        pref: (B, T) fp64 preference vector.
        scale_mode: "min", "median" or "rmse".
        hyper: the scale mode and the rank cut-off rtol, relative to the largest eigenvalue.

    Returns:
        (B, T) in K's dtype.
    """
    Kd = _sym64(K)
    B, T, _ = Kd.shape
    p = pref.to(_F64)
    Kn = Kd / _max_diag(Kd)[:, None, None]
    lam, V = _eigh(Kn)  # ascending
    keep = lam > hyper.rtol * lam[:, -1:] if B > 0 else lam > 0
    rank = keep.sum(dim=-1)
    if hyper.scale_mode == "min":
        # The smallest retained eigenvalue: the first kept one in ascending order.
        sigma = lam.gather(1, (T - rank).clamp(max=T - 1).unsqueeze(-1)).squeeze(-1)
    elif hyper.scale_mode == "median":
        # torch.median of the r retained values (the lower middle one for even r).
        idx = (T - rank + (rank - 1).clamp_min(0) // 2).clamp(max=T - 1)
        sigma = lam.gather(1, idx.unsqueeze(-1)).squeeze(-1)
    else:
        sigma = torch.where(keep, lam, 0.0).sum(dim=-1) / rank.clamp_min(1)
    inv_sqrt = torch.where(keep, 1.0 / torch.where(keep, lam, torch.ones_like(lam)).sqrt(), 0.0)
    c = _from_basis(V, inv_sqrt * _in_basis(V, p)) * sigma.clamp_min(0).sqrt()[:, None]
    c = torch.where((rank > 0)[:, None], c, p)
    return c.to(K.dtype)


# ----------------------------------------------------------------------------------------------
# ConFIG
# ----------------------------------------------------------------------------------------------


def config(K: Tensor, pref: Tensor, hyper: PinvHyper, /) -> Tensor:
    """ConFIG weights (Liu et al., ICLR 2025) from the Gram alone.

    With D = diag(sqrt K_ii), D⁺ its pseudo-inverse and the cosine matrix C = D⁺KD⁺:
    a = D⁺C⁺p and c = (1ᵀKa / aᵀKa)·a, so that Jᵀc = (Σ_i g_iᵀû)·û with û = Jᵀa/‖Jᵀa‖, the
    official J-form. C⁺ drops eigenvalues ≤ rtol·max|λ|. c = 0 when the part of p in C's range
    is below max(rtol, T·eps)·‖p‖, or when ‖Jᵀa‖ is rounding noise against Σ_i |a_i|‖g_i‖.

    Args:
        K: (B, T, T) fp32/fp64.
        pref: (B, T) fp64 target cosine weights.
        hyper: the cut-off rtol of C's pseudo-inverse.

    Returns:
        (B, T) in K's dtype.
    """
    Kd = _sym64(K)
    T = Kd.shape[-1]
    p = pref.to(_F64)
    Kn = Kd / _max_diag(Kd)[:, None, None]
    norms = Kn.diagonal(dim1=-2, dim2=-1).clamp_min(0).sqrt()
    pos = norms > 0
    dinv = torch.where(pos, 1.0 / torch.where(pos, norms, torch.ones_like(norms)), 0.0)
    C = dinv[:, :, None] * Kn * dinv[:, None, :]
    lam, V = _eigh(C)
    mag = lam.abs()
    kept = mag > hyper.rtol * mag.amax(dim=-1, keepdim=True)
    coords = _in_basis(V, p)  # p in C's eigenbasis
    inv = torch.where(kept, 1.0 / torch.where(kept, lam, torch.ones_like(lam)), 0.0)
    a = dinv * _from_basis(V, inv * coords)
    Ka = torch.einsum("bij,bj->bi", Kn, a)
    q = (a * Ka).sum(dim=-1)
    length = Ka.sum(dim=-1)
    # No direction when p has (numerically) no component in C's range, or when Jᵀa cancels to
    # rounding noise against the sum of its parts' norms.
    in_range = torch.where(kept, coords, 0.0).norm(dim=-1)
    bound = (a.abs() * norms).sum(dim=-1)
    eps = T * torch.finfo(_F64).eps
    ok = (in_range > max(hyper.rtol, eps) * p.norm(dim=-1)) & (q.clamp_min(0).sqrt() > eps * bound)
    scale = torch.where(ok, length / torch.where(ok, q, torch.ones_like(q)), 0.0)
    return (scale[:, None] * a).to(K.dtype)


# ----------------------------------------------------------------------------------------------
# CAGrad
# ----------------------------------------------------------------------------------------------


def _cagrad_step_size(
    b_d: Tensor, A: Tensor, C: Tensor, q: Tensor, phi: Tensor, gamma_max: Tensor
) -> Tensor:
    """argmin over γ ∈ [0, γ_max] of h(γ) = γ·bᵀd + φ·sqrt(q + 2γA + γ²C) (exact, closed form).

    h is convex. Its stationary point solves φ(A + γC) = −bᵀd·sqrt(q(γ)); squaring and taking
    the root on the side A + γC ∝ −bᵀd gives γ* = −(A + bᵀd·sqrt((Cq − A²)/(φ²C − (bᵀd)²)))/C.
    A stationary point needs φ²C > (bᵀd)² (by Cauchy-Schwarz |A + γC| ≤ sqrt(C·q(γ))); without
    one h decreases all the way to γ_max. The candidate and both ends are compared on h.
    """
    one = torch.ones_like(q)
    D = phi * phi * C - b_d * b_d
    ok = (C > 0) & (D > 0)
    root = (C * q - A * A).clamp_min(0) / torch.where(ok, D, one)
    c_safe = torch.where(C > 0, C, one)
    gamma = -(A + b_d * root.sqrt()) / c_safe
    gamma = torch.where(ok, gamma, gamma_max)
    gamma = torch.minimum(gamma.clamp_min(0), gamma_max)

    def h(g: Tensor) -> Tensor:
        return g * b_d + phi * (q + 2 * g * A + g * g * C).clamp_min(0).sqrt()

    h0, h1, h2 = h(torch.zeros_like(q)), h(gamma), h(gamma_max)
    best = torch.where(h2 < h1, gamma_max, gamma)
    return torch.where(torch.minimum(h1, h2) < h0, best, torch.zeros_like(q))


def _cagrad_solve(
    Kn: Tensor, b: Tensor, phi: Tensor, *, max_iter: int, tol: float, sync_free: bool
) -> Tensor:
    """argmin_{w ∈ Δ} bᵀw + φ·sqrt(wᵀKw + ε²), batched (φ > 0).

    Away-step Frank-Wolfe with exact (closed-form) line search from the uniform point, each step
    followed by a monotone face correction: on the support A, the stationary point of the
    objective on the face's affine hull is w₀ + w₁/λ, where (K_AA + δI)w₀ ∝ 1 (Σw₀ = 1),
    (K_AA + δI)w₁ = m·1 − b_A (Σw₁ = 0) and λ is the positive root of
    (A + ε²)λ² + 2Bλ + C = φ² (A = w₀ᵀKw₀, B = w₀ᵀKw₁, C = w₁ᵀKw₁). The iterate moves toward
    it as far as the simplex allows (ratio test, blocking vertex dropped); a second candidate
    (that point with its negative entries cut off) can drop several vertices at once; the
    better is kept only if the objective does not rise. Done when the Frank-Wolfe gap
    ∇fᵀw − min_i ∇f_i ≤ tol (it bounds f(w) − f*), or when an iteration left w unchanged.
    """
    Bn, T, _ = Kn.shape
    device = Kn.device
    rows = torch.arange(Bn, device=device)
    eye = torch.eye(T, dtype=_F64, device=device)
    one = torch.ones((), dtype=_F64, device=device)
    zero = torch.zeros((), dtype=_F64, device=device)
    inf = torch.tensor(float("inf"), dtype=_F64, device=device)
    dn = Kn.diagonal(dim1=-2, dim2=-1)
    eps2 = CAGRAD_SMOOTH**2

    def evaluate(X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Kx, xᵀKx and the objective for the n points X of shape (B, n, T) at once."""
        G = torch.matmul(X, Kn)  # K symmetric: row k is (K x_k)ᵀ
        Q = (X * G).sum(dim=-1).clamp_min(0)
        F = torch.matmul(X, b.unsqueeze(-1)).squeeze(-1) + phi[:, None] * (Q + eps2).sqrt()
        return G, Q, F

    w = torch.full((Bn, T), 1.0 / T, dtype=_F64, device=device)
    G0, Q0, F0 = evaluate(w.unsqueeze(1))
    g, q, f = G0[:, 0], Q0[:, 0], F0[:, 0]
    # An iteration that leaves w unchanged bit for bit is a fixed point of this deterministic
    # map (e.g. at g_w = 0, where the subgradient b certifies no gap): the problem is done.
    stalled = torch.zeros(Bn, dtype=torch.bool, device=device)
    for _ in range(max_iter):
        rho = (q + eps2).sqrt()
        grad = b + (phi / rho)[:, None] * g
        s = grad.argmin(dim=-1)
        a = torch.where(w > 0, grad, -inf).argmax(dim=-1)
        gw = (grad * w).sum(dim=-1)
        gap_fw = gw - grad[rows, s]
        gap_aw = grad[rows, a] - gw
        done = (gap_fw <= tol) | stalled
        if not sync_free and bool(done.all()):
            break
        w_kept, g_kept, q_kept, f_kept = w, g, q, f

        # Away-step Frank-Wolfe step, exact line search.
        use_fw = gap_fw >= gap_aw
        v = torch.where(use_fw, s, a)
        g_v, b_v, d_v = g[rows, v], b[rows, v], dn[rows, v]
        bw = (b * w).sum(dim=-1)
        sign = torch.where(use_fw, one, -one)  # d = sign · (e_v − w)
        b_d = sign * (b_v - bw)
        A = sign * (g_v - q)
        C = d_v - 2 * g_v + q
        gamma_max = away_step_limit(w, rows, a, use_fw)
        gamma = _cagrad_step_size(b_d, A, C, q + eps2, phi, gamma_max)
        gamma = torch.where(done, zero, gamma)
        w = vertex_step(w, rows, v, use_fw, gamma, gamma_max)

        # Face correction toward the stationary point of the face's affine hull.
        active = w > 0
        both = active.unsqueeze(-1) & active.unsqueeze(-2)
        system = (
            torch.where(both, Kn, zero)
            + eye * torch.where(active, CAGRAD_FACE_RIDGE, 1.0)[:, None, :]
        )
        rhs = torch.stack([active.to(_F64), torch.where(active, b, zero)], dim=-1)
        z, _ = torch.linalg.solve_ex(system, rhs, check_errors=False)
        z1, z2 = z[..., 0], z[..., 1]
        s1 = z1.sum(dim=-1)
        fin = torch.isfinite(z).all(dim=-1).all(dim=-1) & torch.isfinite(s1) & (s1 > 0)
        s1 = torch.where(fin, s1, one)
        w0 = z1 / s1[:, None]
        w1 = (z2.sum(dim=-1) / s1)[:, None] * z1 - z2
        Kw01 = torch.matmul(torch.stack([w0, w1], dim=1), Kn)
        qa = (w0 * Kw01[:, 0]).sum(dim=-1) + eps2
        qb = (w0 * Kw01[:, 1]).sum(dim=-1)
        qc = (w1 * Kw01[:, 1]).sum(dim=-1)
        disc = qb * qb - qa * (qc - phi * phi)
        lam = (-qb + disc.clamp_min(0).sqrt()) / qa
        ok = fin & (disc >= 0) & (lam > 0) & torch.isfinite(lam) & ~done
        y = w0 + w1 / torch.where(ok, lam, one)[:, None]
        ok = ok & torch.isfinite(y).all(dim=-1)
        y = torch.where(ok[:, None], y, w)
        moved, ok = move_within_simplex(w, y, active, ok, rows)
        cut = torch.where(active, y.clamp_min(0), zero)
        cut_sum = cut.sum(dim=-1, keepdim=True)
        cut = cut / torch.where(cut_sum > 0, cut_sum, one)
        # Candidates 0: the point after the Frank-Wolfe step, 1: moved, 2: cut.
        X = torch.stack([w, moved, cut], dim=1)
        G, Q, F = evaluate(X)
        use_cut = ok & (cut_sum.squeeze(-1) > 0) & (F[:, 2] < F[:, 1])
        best = torch.where(use_cut, 2, 1)
        accept = ok & (F[rows, best] <= F[:, 0])
        # Problems already done keep their point bit for bit (sync-free = early exit).
        pick = torch.where(accept, best, 0)
        w = torch.where(done[:, None], w_kept, X[rows, pick])
        stalled = (w == w_kept).all(dim=-1)
        g = torch.where(done[:, None], g_kept, G[rows, pick])
        q = torch.where(done, q_kept, Q[rows, pick])
        f = torch.where(done, f_kept, F[rows, pick])
    return w


def cagrad(K: Tensor, hyper: CAGradHyper, /) -> Tensor:
    """CAGrad weights (Liu et al., NeurIPS 2021; TorchJD's form).

    K̃ = K / trace K (0 when trace K < norm_eps), b = K̃1/T, φ = c·sqrt(1ᵀK̃1)/T;
    w* = argmin_{w∈Δ} bᵀw + φ·sqrt(wᵀK̃w) (:func:`_cagrad_solve`; for φ = 0 the uniform point
    of the optimal face); weights 1/T + (φ/‖g_w‖)·w*, 0 when ‖g_w‖ = sqrt(w*ᵀK̃w*) < norm_eps;
    then divided by 1 + c² (rescale 1) or 1 + c (rescale 2).

    Args:
        K: (B, T, T) fp32/fp64.
        hyper: c, norm_eps, rescale, max_iter, tol, sync_free (see
            :func:`mtl_fast.ops.aggregators.cagrad_weights`).

    Returns:
        (B, T) in K's dtype.
    """
    c, norm_eps = hyper.c, hyper.norm_eps
    Kd = _sym64(K)
    T = Kd.shape[-1]
    trace = Kd.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    small = trace < norm_eps
    Kn = torch.where(
        small[:, None, None],
        torch.zeros_like(Kd),
        Kd / torch.where(trace > 0, trace, torch.ones_like(trace))[:, None, None],
    )
    b = Kn.sum(dim=-1) / T
    phi = c * Kn.sum(dim=(-1, -2)).clamp_min(0).sqrt() / T
    w = _cagrad_solve(Kn, b, phi, max_iter=hyper.max_iter, tol=hyper.tol, sync_free=hyper.sync_free)
    ties = b <= b.amin(dim=-1, keepdim=True) + CAGRAD_TIE
    w_lin = ties.to(_F64) / ties.sum(dim=-1, keepdim=True)
    w = torch.where((phi > 0)[:, None], w, w_lin)
    rho = _quad(Kn, w).clamp_min(0).sqrt()
    keep = (rho >= norm_eps) & (rho > 0)
    bonus = torch.where(keep, phi / torch.where(keep, rho, torch.ones_like(rho)), 0.0)
    weights = torch.where(keep[:, None], 1.0 / T + bonus[:, None] * w, 0.0)
    if hyper.rescale == 1:
        weights = weights / (1 + c * c)
    elif hyper.rescale == 2:
        weights = weights / (1 + c)
    return weights.to(K.dtype)


# ----------------------------------------------------------------------------------------------
# Nash-MTL
# ----------------------------------------------------------------------------------------------


def nash_mtl(K: Tensor, prev_alpha: Tensor, hyper: NashMTLHyper, /) -> tuple[Tensor, Tensor]:
    """Nash-MTL (Navon et al., ICML 2022): α > 0 with Kα = 1/α, then TorchJD's norm clip.

    α minimises F(α) = ½αᵀKα − Σ log α_i. Damped Newton on K̃ = K / max_i K_ii
    (α = α̃ / sqrt(max K_ii)) from the state: α̃ ← α̃ + Δ/(1 + δ) (δ the Newton decrement; F is
    self-concordant, so the damped step stays positive and converges globally), each step
    followed by the exact minimisation along the ray, α̃ ← α̃·sqrt(T / α̃ᵀK̃α̃). Done when
    δ ≤ tol; a problem not done after ``max_iter`` steps (no solution exists, in practice)
    returns ``prev_alpha``. Weights: α·max_norm/sqrt(αᵀKα) when max_norm > 0 and
    sqrt(αᵀKα) > max_norm, else α.

    Args:
        K: (B, T, T) fp32/fp64.
        prev_alpha: (B, T) fp64 state (positive; others are replaced by 1 as a start).
        hyper: max_norm, max_iter, tol, sync_free (see
            :func:`mtl_fast.ops.aggregators.nash_mtl_step`).

    Returns:
        (weights, alpha), both (B, T) in K's dtype: the clipped weights and the new state.
    """
    max_norm = hyper.max_norm
    Kd = _sym64(K)
    Bn, T, _ = Kd.shape
    device = Kd.device
    prev = prev_alpha.to(_F64)
    scale = _max_diag(Kd)
    Kn = Kd / scale[:, None, None]
    root = scale.sqrt()[:, None]

    def ray(x: Tensor) -> Tensor:
        quad = _quad(Kn, x)
        good = quad > 0
        factor = torch.where(good, (T / torch.where(good, quad, torch.ones_like(quad))).sqrt(), 1.0)
        return x * factor[:, None]

    start = torch.where((prev > 0) & torch.isfinite(prev), prev, 1.0) * root
    a = ray(start)
    done = torch.zeros(Bn, dtype=torch.bool, device=device)
    for _ in range(hyper.max_iter):
        grad = torch.einsum("bij,bj->bi", Kn, a) - 1 / a
        hess = Kn + torch.diag_embed(1 / (a * a))
        L, _ = torch.linalg.cholesky_ex(hess)
        step = -torch.cholesky_solve(grad.unsqueeze(-1), L).squeeze(-1)
        dec = (-(grad * step).sum(dim=-1)).clamp_min(0).sqrt()
        good = torch.isfinite(dec) & torch.isfinite(step).all(dim=-1)
        done = done | (good & (dec <= hyper.tol))
        if not hyper.sync_free and bool(done.all()):
            break
        moved = ray(a + step / (1 + dec)[:, None])
        moved_ok = good & (moved > 0).all(dim=-1) & torch.isfinite(moved).all(dim=-1)
        a = torch.where((moved_ok & ~done)[:, None], moved, a)
    alpha = torch.where(done[:, None], a / root, prev)
    weights = alpha
    if max_norm > 0:
        norm = _quad(Kd, alpha).clamp_min(0).sqrt()
        over = norm > max_norm
        factor = torch.where(over, max_norm / torch.where(over, norm, torch.ones_like(norm)), 1.0)
        weights = alpha * factor[:, None]
    return weights.to(K.dtype), alpha.to(K.dtype)
