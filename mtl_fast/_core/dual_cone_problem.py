"""The dual-cone projection problem itself, shared by the public op (its result check) and the
reference solver: the normalised Gram G̃ every backend solves with and the KKT residual that
certifies a solution. Pure PyTorch, float64."""

from __future__ import annotations

import torch

__all__ = ["kkt_residual", "normalized_gram"]


def normalized_gram(G: torch.Tensor, norm_eps: float, reg_eps: float) -> torch.Tensor:
    """G̃ = sym(G) / tr(G) + reg_eps·I (= reg_eps·I when tr(G) < norm_eps), in float64.

    Args:
        G: (..., T, T) Gram matrices, any float dtype.
        norm_eps: traces below this give the zero matrix before regularisation.
        reg_eps: added to the diagonal after normalisation.

    Returns:
        (..., T, T) float64.
    """
    Gd = G.to(torch.float64)
    Gd = 0.5 * (Gd + Gd.mT)
    trace = Gd.diagonal(dim1=-2, dim2=-1).sum(dim=-1)[..., None, None]
    small = trace < norm_eps
    Gn = torch.where(small, torch.zeros_like(Gd), Gd / torch.where(small, 1.0, trace))
    eye = torch.eye(G.shape[-1], dtype=torch.float64, device=G.device)
    return Gn + reg_eps * eye


def kkt_residual(
    U: torch.Tensor, G: torch.Tensor, W: torch.Tensor, *, norm_eps: float, reg_eps: float
) -> torch.Tensor:
    """Scale-free KKT residual of W as the projection weights of U (per row, float64).

    The largest of: primal infeasibility max_j (u_j − v_j)₊ / s, dual infeasibility
    max_j (−λ_j)₊ / (s·G̃_jj) and complementarity max_j |λ_j (v_j − u_j)| / (s²·G̃_jj), with
    λ = G̃v, s = max(‖u‖∞, ‖v‖∞) — the quantities of the stopping rule, so a converged solve has
    a residual ≤ tol up to rounding (≈ 1e-12 at T = 128).

    Args:
        U: (..., R, T) rows; G: (..., T, T) Grams; W: (..., R, T) the candidate solution.

    Returns:
        (..., R) float64 residuals (0 for a zero row; NaN where the input is not finite).
    """
    Gn = normalized_gram(G, norm_eps, reg_eps)
    u, v = U.to(torch.float64), W.to(torch.float64)
    lam = v @ Gn
    s = torch.maximum(u.abs().amax(dim=-1), v.abs().amax(dim=-1))[..., None]
    s = torch.where(s > 0, s, 1.0)
    d = Gn.diagonal(dim1=-2, dim2=-1)[..., None, :]
    d = torch.where(d > 0, d, 1.0)
    primal = ((u - v) / s).clamp_min(0).amax(dim=-1)
    dual = (-lam / (s * d)).clamp_min(0).amax(dim=-1)
    comp = (lam * (v - u) / (s * s * d)).abs().amax(dim=-1)
    return torch.maximum(primal, torch.maximum(dual, comp))
