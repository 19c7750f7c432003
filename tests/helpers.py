"""Reusable samplers and assertions for the test suite."""

from __future__ import annotations

import torch


def psd_with_rank(T: int, rank: int, gen: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """A (T, T) PSD matrix of the given rank (rank 0 gives zeros)."""
    if rank == 0:
        return torch.zeros(T, T, dtype=dtype)
    A = torch.randn(T, rank, generator=gen, dtype=torch.float64)
    return (A @ A.T).to(dtype)


def conflicting_gram(T: int, gen: torch.Generator, noise: float = 1e-3) -> torch.Tensor:
    """Near-rank-1 Gram whose tasks point in opposite directions (negative cosines)."""
    P = 4 * T + 8
    u = torch.randn(P, generator=gen, dtype=torch.float64)
    signs = torch.where(torch.rand(T, generator=gen) < 0.5, -1.0, 1.0).to(torch.float64)
    signs[0], signs[-1] = 1.0, -1.0
    J = signs[:, None] * u + noise * torch.randn(T, P, generator=gen, dtype=torch.float64)
    return J @ J.T


def duplicated_gram(T: int, gen: torch.Generator) -> torch.Tensor:
    J = torch.randn(T, 2 * T + 3, generator=gen, dtype=torch.float64)
    J[T // 2 :] = J[: T - T // 2].clone()
    return J @ J.T


def objective(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """wᵀKw, batched over leading dimensions, in fp64."""
    K, w = K.double(), w.double()
    return torch.einsum("...i,...ij,...j->...", w, K, w)


def assert_on_simplex(w: torch.Tensor, atol: float = 1e-6) -> None:
    assert torch.isfinite(w).all(), "weights contain NaN/Inf"
    assert (w >= 0).all(), f"negative weights: {w.min().item()}"
    assert torch.allclose(w.sum(-1).double(), torch.ones((), dtype=torch.float64), atol=atol), (
        f"weights do not sum to 1: {w.sum(-1)}"
    )


def assert_kkt(K: torch.Tensor, w: torch.Tensor, tol: float, support: float = 1e-4) -> None:
    """KKT of min wᵀKw on the simplex: every supported coordinate attains min_i (Kw)_i."""
    K, w = K.double(), w.double()
    g = K @ w
    scale = max(K.diagonal().max().item(), 1e-300)
    slack = (g - g.min()) / scale
    assert (slack[w > support] <= tol).all(), f"KKT violated: {slack[w > support].max().item()}"
    # Complementary slackness summed: Σ w_i ((Kw)_i − min Kw) is the Frank-Wolfe gap.
    assert (w * slack).sum().item() <= tol


def opposite_gram(T: int, gen: torch.Generator) -> torch.Tensor:
    """Rows in ± pairs g, −g (exactly opposite gradients); an odd T keeps one lone row."""
    J = torch.randn(T, 2 * T + 3, generator=gen, dtype=torch.float64)
    J[1::2] = -J[0 : T - T % 2 : 2][: J[1::2].shape[0]]
    return J @ J.T


def agreeing_gram(T: int, gen: torch.Generator) -> torch.Tensor:
    """A shared component plus noise: cosines ≈ 0.25, no conflict (the benchmark's gradients)."""
    P = 4 * T + 8
    J = 3.0**0.5 * torch.randn(T, P, generator=gen, dtype=torch.float64)
    J = J + torch.randn(1, P, generator=gen, dtype=torch.float64)
    return J @ J.T


def scaled_gram(T: int, gen: torch.Generator) -> torch.Tensor:
    """Independent gradients whose norms span e^±6."""
    J = torch.randn(T, 2 * T + 3, generator=gen, dtype=torch.float64)
    J = J * torch.exp(torch.empty(T, 1, dtype=torch.float64).uniform_(-6, 6, generator=gen))
    return J @ J.T
