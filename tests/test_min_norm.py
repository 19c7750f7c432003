"""min_norm: against a float64 QP oracle, KKT conditions, invariances, degenerate input."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import mtl_fast
from mtl_fast.kernels.reference import min_norm as ref_min_norm
from tests.helpers import (
    assert_kkt,
    assert_on_simplex,
    conflicting_gram,
    duplicated_gram,
    objective,
    psd_with_rank,
)

SIZES = [1, 2, 3, 5, 8, 16, 32, 64]


def qp_oracle(K: torch.Tensor) -> float:
    """min wᵀKw on the simplex by SLSQP in float64 (scipy), on K normalised by max K_ii."""
    Kn = K.double().numpy()
    scale = max(float(np.diag(Kn).max()), 1e-300)
    Kn = Kn / scale
    T = Kn.shape[0]
    best = np.inf
    for x0 in (np.full(T, 1.0 / T), np.eye(T)[int(np.argmin(np.diag(Kn)))]):
        res = minimize(
            lambda w: w @ Kn @ w,
            x0,
            jac=lambda w: 2 * Kn @ w,
            bounds=[(0.0, 1.0)] * T,
            constraints=[
                {"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}
            ],
            method="SLSQP",
            options={"ftol": 1e-16, "maxiter": 2000},
        )
        w = np.clip(res.x, 0, None)
        w = w / w.sum()
        best = min(best, float(w @ Kn @ w))
    return best * scale


def kinds(T: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "full-rank": psd_with_rank(T, T, gen),
        "rank-1": psd_with_rank(T, 1, gen),
        "conflicting": conflicting_gram(T, gen),
        "duplicated": duplicated_gram(T, gen),
        "low-rank": psd_with_rank(T, max(1, T // 3), gen),
        "zero": torch.zeros(T, T, dtype=torch.float64),
    }


@pytest.mark.parametrize("T", SIZES)
def test_matches_qp_oracle_and_kkt(T: int) -> None:
    gen = torch.Generator().manual_seed(T)
    for name, K in kinds(T, gen).items():
        w = mtl_fast.min_norm(K, tol=1e-10, max_iter=2000)
        assert_on_simplex(w, atol=1e-12)
        scale = max(K.diagonal().max().item(), 1e-300)
        f = objective(K, w).item()
        f_oracle = qp_oracle(K)
        assert f <= f_oracle + 1e-6 * scale, f"{name}: {f} vs oracle {f_oracle}"
        assert_kkt(K, w, tol=1e-6)


@pytest.mark.parametrize("T", [2, 5, 16, 64])
def test_whole_batch_is_solved_at_once(T: int) -> None:
    gen = torch.Generator().manual_seed(100 + T)
    Ks = torch.stack(list(kinds(T, gen).values()))
    batched = mtl_fast.min_norm(Ks.reshape(2, 3, T, T), tol=1e-10)
    assert batched.shape == (2, 3, T)
    for K, w in zip(Ks, batched.reshape(-1, T)):
        single = mtl_fast.min_norm(K, tol=1e-10)
        scale = max(K.diagonal().max().item(), 1e-300)
        assert abs(objective(K, w).item() - objective(K, single).item()) <= 1e-9 * scale


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-12, 1e-6, 1.0, 1e6, 1e12, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_invariant_under_scaling(scale: float, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    for T in (2, 5, 16):
        K = psd_with_rank(T, T, gen)  # full rank: the minimiser is unique
        w1 = mtl_fast.min_norm(K.to(dtype), tol=1e-10)
        ws = mtl_fast.min_norm((K * scale).to(dtype), tol=1e-10)
        assert_on_simplex(ws, atol=1e-5)
        if scale == 0.0:
            continue  # K = 0: every simplex point is optimal
        atol = 1e-9 if dtype == torch.float64 else 2e-3
        torch.testing.assert_close(ws, w1, atol=atol, rtol=0)


@pytest.mark.parametrize("T", [3, 8, 32])
def test_permutation_equivariance(T: int) -> None:
    gen = torch.Generator().manual_seed(T)
    K = psd_with_rank(T, T, gen)
    perm = torch.randperm(T, generator=gen)
    w = mtl_fast.min_norm(K, tol=1e-12)
    w_perm = mtl_fast.min_norm(K[perm][:, perm], tol=1e-12)
    torch.testing.assert_close(w_perm, w[perm], atol=1e-8, rtol=0)


def test_closed_forms() -> None:
    # T = 1 → [1]; two opposite gradients of equal norm → [½, ½]; a zero gradient wins alone.
    assert mtl_fast.min_norm(torch.tensor([[3.0]])).tolist() == [1.0]
    opposite = torch.tensor([[4.0, -4.0], [-4.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(
        mtl_fast.min_norm(opposite), torch.tensor([0.5, 0.5], dtype=torch.float64)
    )
    with_zero = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert mtl_fast.min_norm(with_zero).tolist() == [0.0, 1.0]
    # Two gradients at an acute angle: the exact vertex, not γ clamped to [0.001, 0.999] as
    # in the published 2-task closed form.
    # g2 is shorter and ⟨g1, g2⟩ ≥ |g2|²: the optimum is the vertex e_2 itself.
    K = torch.tensor([[2.0, 1.998], [1.998, 1.996]], dtype=torch.float64)
    w = mtl_fast.min_norm(K, tol=1e-14)
    assert w.tolist() == [0.0, 1.0]


@pytest.mark.parametrize("entry", [1e-30, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_entries_give_valid_weights(entry: float, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    for T in (2, 3, 17):
        K = (psd_with_rank(T, T, gen) / T * entry).to(dtype)
        w = mtl_fast.min_norm(K)
        assert_on_simplex(w, atol=1e-5)


def test_sync_free_form_agrees_with_early_exit() -> None:
    gen = torch.Generator().manual_seed(3)
    Ks = torch.stack(
        [psd_with_rank(8, 8, gen), conflicting_gram(8, gen), torch.zeros(8, 8, dtype=torch.float64)]
    )
    early = mtl_fast.min_norm(Ks, tol=1e-10, sync_free=False)
    fixed = mtl_fast.min_norm(Ks, tol=1e-10, sync_free=True, max_iter=300)
    torch.testing.assert_close(fixed, early, atol=1e-10, rtol=0)


def test_sync_free_form_has_no_host_sync() -> None:
    """The form a CUDA device runs compiles as ONE graph: any host read-back (.item(), bool(),
    data-dependent Python control flow) would be a graph break and fail fullgraph=True."""
    gen = torch.Generator().manual_seed(4)
    K = torch.stack([psd_with_rank(5, 5, gen), conflicting_gram(5, gen)])
    solve = functools.partial(ref_min_norm, max_iter=4, tol=1e-8, sync_free=True)
    torch._dynamo.reset()
    compiled = torch.compile(solve, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(K), solve(K))


def test_early_exit_form_is_not_sync_free() -> None:
    """Guard for the check above: the CPU form does read back a value, and dynamo notices."""
    gen = torch.Generator().manual_seed(4)
    K = psd_with_rank(5, 5, gen)[None]
    solve = functools.partial(ref_min_norm, max_iter=4, tol=1e-8, sync_free=False)
    torch._dynamo.reset()
    with pytest.raises(Exception):  # noqa: B017 - dynamo's error class varies across versions
        torch.compile(solve, fullgraph=True, backend="eager")(K)


def test_half_precision_input_returns_fp32() -> None:
    gen = torch.Generator().manual_seed(5)
    K = psd_with_rank(4, 4, gen)
    for dtype in (torch.float16, torch.bfloat16):
        w = mtl_fast.min_norm(K.to(dtype))
        assert w.dtype == torch.float32
        assert_on_simplex(w)
