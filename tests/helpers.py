"""Reusable samplers and assertions for the test suite.

Every tolerance comes from :mod:`mtl_fast._core.precision` (the rule ``mtl-fast verify``
applies): against the float64 truth of the very inputs a backend sees, its relative error may be
at most twice the reference's own error plus ``ATOL``; the reference itself is held to ``ATOL``.
"""

from __future__ import annotations

import torch

from mtl_fast._core.precision import ADAM_TOL, ATOL, relative_error, tolerance
from mtl_fast.kernels import reference as ref

FP64, FP32, FP16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
DTYPES = [FP32, FP16, BF16, FP64]
LOW = (FP16, BF16)


def every_dtype(cases: list[tuple]) -> list[tuple]:
    """The cases of a test grid with every dtype of :data:`DTYPES` in front: (dtype, *case)."""
    return [(d, *c) for d in DTYPES for c in cases]


# -------------------------------------------------------------------------------- samplers


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


def gram_truth(J: torch.Tensor) -> torch.Tensor:
    """J Jᵀ in float64 on the CPU, batched over leading dimensions."""
    Jd = J.detach().cpu().double()
    return Jd @ Jd.transpose(-1, -2)


# ------------------------------------------------------------------------------ tolerances


def rule(ref_err: float, dtype: torch.dtype, out_dtype=None, *, is_reference: bool = False):
    """The tolerance of :func:`mtl_fast._core.precision.tolerance`; the reference is held to
    ``tolerance(0, ...)`` (= ATOL), as ``mtl-fast verify`` holds it."""
    return tolerance(0.0 if is_reference else ref_err, dtype, out_dtype)


def assert_within_rule(
    x: torch.Tensor,
    truth: torch.Tensor,
    ref_out: torch.Tensor,
    dtype: torch.dtype,
    out_dtype: torch.dtype | None = None,
    *,
    is_reference: bool = False,
) -> None:
    """``x`` (any device) is within the precision rule of the float64 ``truth``, given the
    reference's output ``ref_out`` on the same inputs."""
    err = relative_error(x.detach().cpu(), truth.cpu())
    ref_err = relative_error(ref_out.detach().cpu(), truth.cpu())
    tol = rule(ref_err, dtype, out_dtype, is_reference=is_reference)
    assert err <= tol, f"error {err:.3g} > tolerance {tol:.3g} (reference's own: {ref_err:.3g})"


def adam_tolerance(dtype: torch.dtype) -> float:
    """How close a backend's Adam states and fp32/fp64 parameters stay to the reference's after
    several steps: fp64 to ATOL[fp64]; fp32 ten times closer than ``mtl-fast verify``'s
    ADAM_TOL (the kernels follow torch's order of operations); fp16/bf16 to two ulps, as
    d (or p) is rounded to the low-precision dtype and neighbouring sums may round apart."""
    if dtype in LOW:
        return 2 * torch.finfo(dtype).eps
    return ATOL[FP64] if dtype == FP64 else ADAM_TOL / 10


# ------------------------------------------------------------------------------ assertions


def objective(K: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """wᵀKw, batched over leading dimensions, in fp64 on the CPU."""
    K, w = K.detach().cpu().double(), w.detach().cpu().double()
    return torch.einsum("...i,...ij,...j->...", w, K, w)


def assert_on_simplex(w: torch.Tensor, atol: float = 1e-6) -> None:
    w = w.detach().cpu()
    assert torch.isfinite(w).all(), "weights contain NaN/Inf"
    assert (w >= 0).all(), f"negative weights: {w.min().item()}"
    total = w.double().sum(-1)  # the weights' own error, not that of an fp32 sum
    assert torch.allclose(total, torch.ones((), dtype=torch.float64), atol=atol), (
        f"weights do not sum to 1: {total}"
    )


def assert_kkt(K: torch.Tensor, w: torch.Tensor, tol: float, support: float = 1e-4) -> None:
    """KKT of min wᵀKw on the simplex: every supported coordinate attains min_i (Kw)_i."""
    K, w = K.detach().cpu().double(), w.detach().cpu().double()
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


def assert_psd(K: torch.Tensor) -> None:
    """Symmetric K (T, T) has no eigenvalue below −1e-5 of the largest."""
    eig = torch.linalg.eigvalsh(K.detach().cpu().double())
    assert eig.min() >= -1e-5 * eig.max().abs().clamp_min(1e-30), "Gram must be PSD"


def reference_gram(J: torch.Tensor) -> torch.Tensor:
    """The reference's Gram of (..., T, P) J on the CPU (the error the rule doubles)."""
    T, P = J.shape[-2], J.shape[-1]
    return ref.gram(J.detach().cpu().reshape(-1, T, P)).reshape(*J.shape[:-2], T, T)
