"""Reference batched min-norm solve: w* = argmin_{w ∈ Δ} wᵀKw.

Algorithm: away-step Frank-Wolfe with exact line search, each step followed by a monotone
*face correction* (the fully-corrective idea of Wolfe's min-norm-point algorithm). All problems
of the batch advance together under per-problem masks. Per problem:

1. Normalise: K ← K / max_i K_ii (when positive). Every later quantity is then scale-free, so
   the weights do not depend on the scale of K, and entries from 1e-30 to 1e30 neither over- nor
   underflow. The reference computes in float64 whatever K's dtype.
2. Start at the vertex e_i with the smallest K_ii.
3. Each iteration, with g = Kw and f = wᵀKw: the Frank-Wolfe vertex s = argmin_i g_i, the away
   vertex a = argmax_{i: w_i>0} g_i. The duality gap is 2(f − g_s) (the gradient is 2Kw); a
   problem is done when gap ≤ tol (relative to max K_ii, by step 1), which bounds f − f* by the
   same amount. Otherwise take the Frank-Wolfe direction e_s − w if f − g_s ≥ g_a − f, else the
   away direction w − e_a (γ_max = w_a / (1 − w_a)), with the exact line search
   γ = −dᵀKw / dᵀKd clipped to [0, γ_max] (γ_max when the curvature vanishes); an away step at
   γ_max drops vertex a exactly.
4. Face correction: on the support A = {i: w_i > 0}, the affine min-norm point is
   y ∝ (K_AA + δI)⁻¹ 1 (δ = 1e-12 regularises rank-deficient faces: a singular face whose
   affine hull holds 0 then gives y with yᵀKy ≈ 0, as it should). Move from w toward y as far as
   the simplex allows (ratio test; the blocking vertex is dropped), and keep the move only if it
   does not raise f. The correction never increases f, so the Frank-Wolfe guarantees stay; it is
   what makes ill-conditioned faces converge. Measured (fp64, T = 64, near-rank-1 conflicting
   Grams with 1e-3 relative noise): plain away steps had not reached a gap of 1e-8 after 3000
   iterations and their f was still 31× the optimum; with the correction: 62 iterations.

Degenerate input (T = 1, K = 0, duplicate or opposite rows, rank 1) always yields a point of
the simplex, never NaN. In the ``sync_free`` form the loop runs exactly ``max_iter`` iterations
with no data-dependent Python control flow (``torch.linalg.solve_ex`` without error checks), so
on a CUDA device no value is read back to the host; otherwise it stops once every problem is
done. References: Jaggi (ICML 2013); Lacoste-Julien & Jaggi (NeurIPS 2015) for away steps;
Wolfe (Math. Programming 1976) for the corrective step.
"""

from __future__ import annotations

import torch

# Ridge added to the face system, relative to max K_ii = 1 after normalisation.
FACE_RIDGE = 1e-12


def min_norm(K: torch.Tensor, /, *, max_iter: int, tol: float, sync_free: bool) -> torch.Tensor:
    """Min-norm point of the convex hull, batched.

    Args:
        K: (B, T, T) symmetric PSD, float32 or float64.
        max_iter: iteration budget (≥ 0).
        tol: stop when the duality gap ≤ tol · max_i K_ii.
        sync_free: run the full budget with masks and no host read-back.

    Returns:
        (B, T) weights in K's dtype, each row on the simplex.
    """
    out_dtype = K.dtype
    Kd = K.to(torch.float64)
    B, T, _ = Kd.shape
    device = Kd.device
    diag = Kd.diagonal(dim1=-2, dim2=-1)
    scale = diag.amax(dim=-1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    Kn = Kd / scale[:, None, None]
    dn = diag / scale[:, None]
    rows = torch.arange(B, device=device)
    eye = torch.eye(T, dtype=torch.float64, device=device)
    one = torch.ones((), dtype=torch.float64, device=device)
    zero = torch.zeros((), dtype=torch.float64, device=device)
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=device)

    w = torch.nn.functional.one_hot(dn.argmin(dim=-1), T).to(torch.float64)

    def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gx = torch.bmm(Kn, x.unsqueeze(-1)).squeeze(-1)
        return gx, (x * gx).sum(dim=-1)

    g, f = objective(w)
    for _ in range(max_iter):
        s = g.argmin(dim=-1)
        g_s = g[rows, s]
        a = torch.where(w > 0, g, -inf).argmax(dim=-1)
        g_a = g[rows, a]
        gap_fw = f - g_s
        gap_aw = g_a - f
        done = 2 * gap_fw <= tol
        if not sync_free and bool(done.all()):
            break

        # Away-step Frank-Wolfe step with exact line search.
        use_fw = gap_fw >= gap_aw
        num = torch.where(use_fw, gap_fw, gap_aw).clamp_min(0)  # −dᵀKw ≥ 0
        den = torch.where(use_fw, dn[rows, s] - 2 * g_s + f, f - 2 * g_a + dn[rows, a])
        gamma_max = away_step_limit(w, rows, a, use_fw)
        gamma = torch.where(den > 0, num / torch.where(den > 0, den, one), gamma_max)
        gamma = torch.minimum(gamma, gamma_max)
        gamma = torch.where(done | (num <= 0), zero, gamma)
        w = vertex_step(w, rows, torch.where(use_fw, s, a), use_fw, gamma, gamma_max)

        # Face correction toward the affine min-norm point of the support.
        active = w > 0
        both = active.unsqueeze(-1) & active.unsqueeze(-2)
        system = (
            torch.where(both, Kn, zero) + eye * torch.where(active, FACE_RIDGE, 1.0)[:, None, :]
        )
        z, _ = torch.linalg.solve_ex(system, active.to(torch.float64), check_errors=False)
        total = z.sum(dim=-1)
        ok = torch.isfinite(total) & (total > 0) & torch.isfinite(z).all(dim=-1) & ~done
        y = z / torch.where(ok, total, one)[:, None]
        moved, ok = move_within_simplex(w, y, active, ok, rows)
        g_w, f_w = objective(w)
        g_moved, f_moved = objective(moved)
        accept = ok & (f_moved <= f_w)
        w = torch.where(accept[:, None], moved, w)
        # The next iteration's Kw and wᵀKw, for whichever point was kept.
        g = torch.where(accept[:, None], g_moved, g_w)
        f = torch.where(accept, f_moved, f_w)
    return w.to(out_dtype)


def away_step_limit(
    w: torch.Tensor, rows: torch.Tensor, a: torch.Tensor, use_fw: torch.Tensor
) -> torch.Tensor:
    """The largest step of an away-step Frank-Wolfe move: 1 toward a vertex, w_a / (1 − w_a)
    away from vertex a. An away step from a vertex (w_a = 1) has zero gap and is never taken."""
    one = torch.ones((), dtype=w.dtype, device=w.device)
    w_a = w[rows, a]
    return torch.where(use_fw, one, w_a / torch.where(w_a < 1, 1 - w_a, one))


def vertex_step(
    w: torch.Tensor,
    rows: torch.Tensor,
    v: torch.Tensor,
    use_fw: torch.Tensor,
    gamma: torch.Tensor,
    gamma_max: torch.Tensor,
) -> torch.Tensor:
    """(B, T) w moved by γ toward vertex v (Frank-Wolfe) or away from it; a full away step
    drops v from the support. Stays on the simplex (clamped and renormalised)."""
    coef = torch.where(use_fw, 1 - gamma, 1 + gamma)
    w = coef[:, None] * w
    w[rows, v] += torch.where(use_fw, gamma, -gamma)
    drop = ~use_fw & (gamma >= gamma_max) & (gamma > 0)
    w[rows, v] = torch.where(drop, torch.zeros_like(gamma), w[rows, v])
    w = w.clamp_min(0)
    return w / w.sum(dim=-1, keepdim=True)


def move_within_simplex(
    w: torch.Tensor, y: torch.Tensor, active: torch.Tensor, ok: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) w moved toward the face point y as far as the simplex allows (the first support
    entry to reach 0 leaves it), and ``ok`` cleared where the result has no mass."""
    one = torch.ones((), dtype=w.dtype, device=w.device)
    inf = torch.full((), float("inf"), dtype=w.dtype, device=w.device)
    shrink = active & (y < 0)
    ratio = torch.where(shrink, w / torch.where(shrink, w - y, one), inf)
    r_min, blocker = ratio.min(dim=-1)
    step = torch.clamp(r_min, max=1.0)
    moved = w + step[:, None] * (y - w)
    moved[rows, blocker] = torch.where(r_min <= 1, torch.zeros_like(r_min), moved[rows, blocker])
    moved = moved.clamp_min(0)
    moved_sum = moved.sum(dim=-1, keepdim=True)
    ok = ok & (moved_sum.squeeze(-1) > 0)
    return moved / torch.where(ok[:, None], moved_sum, one), ok
