"""dual_cone_projection, upgrad_weights and dualproj_weights on every backend that runs here:
against a float64 QP oracle, KKT, closed forms, degenerate Grams and scales, invariances,
batching, bad input, the sync-free form, and each backend's own guarantees.

KKT of the projection QP  min_v vᵀG̃v  s.t.  v ≥ u  (G̃ positive definite): with the Lagrangian
vᵀG̃v − μᵀ(v − u), stationarity gives μ = 2G̃v, so v is optimal if and only if
    v ≥ u,   G̃v ≥ 0,   (G̃v)_j (v_j − u_j) = 0 for every j.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import mtl_fast
from mtl_fast._core import dispatch as _dispatch
from mtl_fast._core.contracts import CONTRACTS, DualConeHyper
from mtl_fast._core.dual_cone_problem import normalized_gram
from mtl_fast.kernels import cpu
from mtl_fast.kernels.cpu import loader
from mtl_fast.kernels.reference.dual_cone import _bpp, project
from mtl_fast.ops.dual_cone import kkt_residual
from tests.backends import assert_abi_version, assert_one_graph, cpu_library_at
from tests.helpers import (
    agreeing_gram,
    conflicting_gram,
    duplicated_gram,
    opposite_gram,
    psd_with_rank,
    scaled_gram,
)

BACKENDS = ["reference", "cpu", "triton"]
SIZES = [1, 2, 3, 5, 8, 16, 32, 64, 128]
# Triton runs under its interpreter here (~0.1 s per program at T = 8): small problems only.
INTERPRETED_T = 8
EPS = {"norm_eps": 1e-4, "reg_eps": 1e-4}
# The solver's settings of the iterate comparisons: stop early, or run the whole budget.
EARLY = DualConeHyper(max_iter=64, tol=1e-10, sync_free=False, **EPS)
FIXED = DualConeHyper(max_iter=64, tol=1e-10, sync_free=True, **EPS)


def usable(backend: str, T: int = 2) -> None:
    """Skip unless ``backend`` can run dual_cone on CPU tensors of T tasks here (and, for the
    interpreted Triton kernel, in reasonable time)."""
    status = mtl_fast.backends()[backend]
    if not status.available:
        pytest.skip(f"backend {backend!r} unavailable: {status.reason}")
    try:
        _dispatch.resolve("dual_cone", backend, torch.device("cpu"), tasks=T)
    except mtl_fast.BackendUnavailableError as exc:
        pytest.skip(str(exc))
    if backend == "triton" and T > INTERPRETED_T:
        pytest.skip(f"the Triton interpreter is too slow above T = {INTERPRETED_T}")


def kinds(T: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "full-rank": psd_with_rank(T, T, gen),
        "rank-1": psd_with_rank(T, 1, gen),
        "low-rank": psd_with_rank(T, max(1, T // 3), gen),
        "conflicting": conflicting_gram(T, gen),
        "duplicated": duplicated_gram(T, gen),
        "opposite": opposite_gram(T, gen),
        "agreeing": agreeing_gram(T, gen),
        "scaled": scaled_gram(T, gen),
        "zero": torch.zeros(T, T, dtype=torch.float64),
    }


def rows(T: int, gen: torch.Generator) -> torch.Tensor:
    """UPGrad rows e_i/T, the DualProj row 1/T, random rows (negative entries included), 0."""
    return torch.cat(
        [
            torch.eye(T, dtype=torch.float64) / T,
            torch.full((1, T), 1.0 / T, dtype=torch.float64),
            torch.randn(3, T, generator=gen, dtype=torch.float64),
            torch.zeros(1, T, dtype=torch.float64),
        ]
    )


def qp_oracle(U: torch.Tensor, G: torch.Tensor, **eps: float) -> torch.Tensor:
    """An independent float64 QP solver on the normalised, regularised Gram: quadprog
    (Goldfarb-Idnani dual active set, TorchJD's solver) when installed, else scipy's
    bounded-variable least squares min ‖Lᵀv‖² s.t. v ≥ u with G̃ = LLᵀ (exact active set)."""
    Gn = normalized_gram(G, eps.get("norm_eps", 1e-4), eps.get("reg_eps", 1e-4)).numpy()
    T = Gn.shape[0]
    try:
        import quadprog
    except ImportError:
        from scipy.optimize import lsq_linear

        Lt = np.linalg.cholesky(Gn).T
        return torch.from_numpy(
            np.stack(
                [
                    lsq_linear(Lt, np.zeros(T), bounds=(u, np.inf), method="bvls", tol=1e-15).x
                    for u in U.double().numpy()
                ]
            )
        )
    return torch.from_numpy(
        np.stack(
            [quadprog.solve_qp(Gn, np.zeros(T), np.eye(T), u, 0)[0] for u in U.double().numpy()]
        )
    )


def _has_quadprog() -> bool:
    try:
        import quadprog  # noqa: F401
    except ImportError:
        return False
    return True


# How close the oracle itself gets: quadprog to rounding; scipy's BVLS on the Cholesky factor
# stops with KKT residuals up to 4.1e-8 on the "scaled" Grams at T = 128 (measured; the solvers
# under test reach 7.6e-11 there), so without quadprog the comparison allows 1e-7.
ORACLE_TOL = 1e-8 if _has_quadprog() else 1e-7


def assert_kkt(U: torch.Tensor, G: torch.Tensor, W: torch.Tensor, tol: float, **eps: float) -> None:
    """The KKT conditions above, scale-free (see kkt_residual), and W ≥ U exactly."""
    assert torch.isfinite(W).all(), "non-finite weights"
    assert (W >= U.to(W.dtype)).all(), "primal infeasible"
    res = kkt_residual(U, G, W, **eps)
    assert (res <= tol).all(), f"KKT residual {res.max().item():.2e} > {tol:.0e}"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest error of a row relative to that row's largest entry."""
    a, b = a.double(), b.double()
    scale = b.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)
    return float(((a - b).abs() / scale).max())


def solve(U: torch.Tensor, G: torch.Tensor, backend: str, **kw: object) -> torch.Tensor:
    return mtl_fast.dual_cone_projection(U, G, backend=backend, **kw)  # type: ignore[call-overload]


# --- against the QP oracle, KKT --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", SIZES)
def test_matches_qp_oracle_and_kkt(backend: str, T: int) -> None:
    usable(backend, T)
    gen = torch.Generator().manual_seed(T)
    for name, G in kinds(T, gen).items():
        U = rows(T, gen)
        W = solve(U, G, backend)
        assert W.dtype == torch.float64 and W.shape == U.shape
        assert_kkt(U, G, W, tol=1e-9)
        W_qp = qp_oracle(U, G)
        # Both are exact up to rounding and the stopping tolerances (see ORACLE_TOL).
        assert rel_err(W, W_qp) <= ORACLE_TOL, f"{name}: {rel_err(W, W_qp):.1e}"
        Gn = normalized_gram(G, 1e-4, 1e-4)
        f = torch.einsum("ri,ij,rj->r", W, Gn, W)
        f_qp = torch.einsum("ri,ij,rj->r", W_qp, Gn, W_qp)
        assert (f <= f_qp * (1 + 1e-9) + 1e-300).all(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_forms(backend: str) -> None:
    usable(backend, 4)
    # Zero Gram (trace < norm_eps): G̃ = reg·I, so v = max(u, 0).
    U = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)
    W = solve(U, torch.zeros(3, 3, dtype=torch.float64), backend)
    assert W.tolist() == [[0.5, 0.0, 2.0]]
    # Orthogonal gradients (a diagonal G): no conflict, v = max(u, 0).
    D = torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64))
    torch.testing.assert_close(solve(U, D, backend), torch.tensor([[0.5, 0.0, 2.0]]).double())
    # Two exactly opposite gradients of equal norm: G̃ = [[.5+r, -.5], [-.5, .5+r]], so the row
    # e_0 is projected to v = (1, .5/(.5+r)).
    K = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    r = 1e-4
    expected = torch.tensor([[1.0, 0.5 / (0.5 + r)], [0.5 / (0.5 + r), 1.0]], dtype=torch.float64)
    torch.testing.assert_close(
        solve(torch.eye(2, dtype=torch.float64), K, backend), expected, atol=1e-15, rtol=0
    )
    # T = 1: v = max(u, 0) whatever G.
    one = solve(torch.tensor([[-2.0], [3.0]]), torch.tensor([[5.0]]), backend)
    assert one.tolist() == [[0.0], [3.0]]
    # max_iter = 0 returns U (feasible, unsolved); u = 0 gives 0.
    G = conflicting_gram(4, torch.Generator().manual_seed(0))
    U4 = torch.eye(4, dtype=torch.float64)
    assert torch.equal(solve(U4, G, backend, max_iter=0), U4)
    assert torch.equal(solve(torch.zeros(2, 4), G.float(), backend), torch.zeros(2, 4))
    # The docstring's example: two conflicting gradients.
    W = solve(torch.eye(2), torch.tensor([[1.0, -2.0], [-2.0, 9.0]]), backend)
    torch.testing.assert_close(W, torch.tensor([[1.0, 2 / 9], [1.998, 1.0]]), atol=1e-4, rtol=0)


# --- degenerate Grams, scales ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-12, 1e-6, 1.0, 1e6, 1e12, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scale_only_matters_through_norm_eps(
    backend: str, scale: float, dtype: torch.dtype
) -> None:
    usable(backend)
    gen = torch.Generator().manual_seed(7)
    sizes = (2, 5) if backend == "triton" else (2, 5, 16, 33)
    for T in sizes:
        for G in (conflicting_gram(T, gen), duplicated_gram(T, gen), opposite_gram(T, gen)):
            G = G / G.diagonal().sum()  # trace 1
            U = rows(T, gen)
            Ws = solve(U.to(dtype), (G * scale).to(dtype), backend)
            assert Ws.dtype == dtype
            assert torch.isfinite(Ws).all()
            assert (Ws >= U.to(dtype)).all()
            if scale < 1e-4:  # trace below norm_eps: the identity metric
                torch.testing.assert_close(Ws, U.to(dtype).clamp_min(0), atol=0, rtol=0)
                continue
            W1 = solve(U, G, "reference")
            tol = 1e-9 if dtype == torch.float64 else 1e-3
            assert rel_err(Ws, W1) <= tol, f"T={T}: {rel_err(Ws, W1):.1e}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [2, 3, 8, 31])
def test_no_regularisation_on_singular_grams_stays_finite(backend: str, T: int) -> None:
    """reg_eps = 0 on a singular Gram: free blocks can be singular; the ridge fallback keeps the
    result finite, feasible and (up to the ridge) optimal."""
    usable(backend, T)
    gen = torch.Generator().manual_seed(T)
    for G in (psd_with_rank(T, 1, gen), duplicated_gram(T, gen), opposite_gram(T, gen)):
        U = rows(T, gen)
        W = solve(U, G, backend, reg_eps=0.0)
        assert torch.isfinite(W).all()
        assert (W >= U).all()
        lam = W @ normalized_gram(G, 1e-4, 0.0)
        assert (lam >= -1e-6 * W.abs().amax(dim=-1, keepdim=True).clamp_min(1e-300)).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_nonfinite_input_is_refused_or_gives_nan_rows(backend: str) -> None:
    usable(backend, 3)
    G = torch.eye(3).repeat(2, 1, 1)
    G[1, 1, 1] = float("nan")
    # Checked (the CPU default): an error naming the task; nothing is computed.
    with pytest.raises(mtl_fast.NonFiniteError, match=r"task\(s\) \[1\]") as info:
        solve(torch.eye(3), G, backend)
    assert info.value.tasks == [1]
    U = torch.eye(3)
    U[2, 0] = float("inf")
    with pytest.raises(mtl_fast.NonFiniteError, match=r"U is not finite .* \[0\]"):
        solve(U, G[0], backend)
    # Unchecked: the problem (or the row) comes out as NaN, the others are untouched.
    W = solve(torch.eye(3), G, backend, check_finite=False)
    assert torch.isnan(W[1]).all() and torch.isfinite(W[0]).all()
    W = solve(U, G[0], backend, check_finite=False)
    assert torch.isnan(W[2]).all() and torch.isfinite(W[:2]).all()
    off = torch.eye(3)
    off[0, 2] = off[2, 0] = float("inf")  # an off-diagonal entry: named by its rows
    with pytest.raises(mtl_fast.NonFiniteError) as info:
        solve(torch.eye(3), off, backend)
    assert info.value.tasks == [0, 2]


# --- invariances, batching -------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [3, 8, 32, 64])
def test_permutation_equivariance(backend: str, T: int) -> None:
    usable(backend, T)
    gen = torch.Generator().manual_seed(T)
    for G in (psd_with_rank(T, T, gen), conflicting_gram(T, gen, 0.1), scaled_gram(T, gen)):
        U = rows(T, gen)
        perm = torch.randperm(T, generator=gen)
        W = solve(U, G, backend)
        W_perm = solve(U[:, perm], G[perm][:, perm], backend)
        torch.testing.assert_close(W_perm, W[:, perm], atol=1e-9, rtol=0)
        rperm = torch.randperm(U.shape[0], generator=gen)
        assert rel_err(solve(U[rperm], G, backend), W[rperm]) <= 1e-11


@pytest.mark.parametrize("backend", BACKENDS)
def test_positive_homogeneity_in_u(backend: str) -> None:
    usable(backend, 5)
    gen = torch.Generator().manual_seed(3)
    G = conflicting_gram(5, gen, 0.2)
    U = rows(5, gen)
    W = solve(U, G, backend)
    torch.testing.assert_close(solve(3.5 * U, G, backend), 3.5 * W, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_equals_looped(backend: str) -> None:
    T = 5 if backend == "triton" else 16
    usable(backend, T)
    gen = torch.Generator().manual_seed(100 + T)
    Gs = torch.stack(list(kinds(T, gen).values()))[:6].reshape(2, 3, T, T)
    U = torch.randn(2, 3, 4, T, generator=gen, dtype=torch.float64)
    W = solve(U, Gs, backend)
    assert W.shape == (2, 3, 4, T)
    for i in range(2):
        for j in range(3):
            assert rel_err(W[i, j], solve(U[i, j], Gs[i, j], backend)) <= 1e-11
    # Shared rows broadcast over the batch of Grams; a 1-D U is one row.
    shared = solve(U[0, 0], Gs, backend)
    assert shared.shape == (2, 3, 4, T)
    assert rel_err(shared, solve(U[0, 0].expand(2, 3, 4, T), Gs, backend)) <= 1e-11
    d = solve(U[0, 0, 0], Gs, backend)
    assert d.shape == (2, 3, T)
    torch.testing.assert_close(d, solve(U[0, 0, :1], Gs, backend)[..., 0, :])
    # With one 2-D Gram every leading index of U is a row (TorchJD's [..., m] convention).
    W2 = solve(U, Gs[0, 0], backend)
    assert W2.shape == U.shape
    assert rel_err(W2.reshape(-1, T), solve(U.reshape(-1, T), Gs[0, 0], backend)) <= 1e-11
    # Empty batches and rows.
    assert solve(torch.zeros(0, T), Gs, backend).shape == (2, 3, 0, T)
    assert solve(torch.zeros(2, T), Gs[:0], backend).shape == (0, 3, 2, T)
    # The weightings over a batch of Grams, and a preference per problem.
    up = mtl_fast.upgrad_weights(Gs, backend=backend)
    assert up.shape == (2, 3, T)
    torch.testing.assert_close(up[1, 2], mtl_fast.upgrad_weights(Gs[1, 2], backend=backend))
    dp = mtl_fast.dualproj_weights(Gs, backend=backend)
    torch.testing.assert_close(dp[0, 1], mtl_fast.dualproj_weights(Gs[0, 1], backend=backend))
    prefs = torch.rand(2, 3, T, generator=gen, dtype=torch.float64)
    batch = mtl_fast.upgrad_weights(Gs, pref=prefs, backend=backend)
    torch.testing.assert_close(
        batch[0, 2], mtl_fast.upgrad_weights(Gs[0, 2], pref=prefs[0, 2], backend=backend)
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_returns_fp32(backend: str) -> None:
    usable(backend, 6)
    G = conflicting_gram(6, torch.Generator().manual_seed(5), 0.1)
    for dtype in (torch.float16, torch.bfloat16):
        K = G.to(dtype)
        outs = (
            solve(torch.eye(6), K, backend),
            mtl_fast.upgrad_weights(K, backend=backend),
            mtl_fast.dualproj_weights(K, backend=backend),
        )
        for out in outs:
            assert out.dtype == torch.float32
            assert torch.isfinite(out).all()
    assert mtl_fast.upgrad_weights(G.float(), backend=backend).dtype == torch.float32
    assert (solve(torch.eye(6) / 6, G.float(), backend) >= torch.eye(6) / 6).all()


# --- the weightings --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrad_and_dualproj_are_their_projections(backend: str) -> None:
    """UPGrad: w = Σ_i v_i with v_i the projection of p_i e_i; DualProj: w = the projection of
    p; both equal the mean weights when no task conflicts, and wᵀJ conflicts with no task."""
    usable(backend, 7)
    gen = torch.Generator().manual_seed(11)
    T = 7
    J = torch.randn(T, 40, generator=gen, dtype=torch.float64)
    J[3] = -J[0] + 0.1 * J[3]  # a conflict
    K = J @ J.T
    pref = torch.tensor([0.3, 0.0, 1.2, 0.5, -0.2, 2.0, 0.1], dtype=torch.float64)
    for p in (None, pref):
        pv = torch.full((T,), 1.0 / T, dtype=torch.float64) if p is None else p
        w = mtl_fast.upgrad_weights(K, pref=p, backend=backend)
        rows_ = solve(torch.diag(pv), K, backend)
        torch.testing.assert_close(w, rows_.sum(dim=0), atol=1e-12, rtol=0)
        if p is not None:  # p_i ≤ 0 gives 0
            assert rows_[1].abs().max() == 0 and rows_[4].abs().max() == 0
        d = mtl_fast.dualproj_weights(K, pref=p, backend=backend)
        torch.testing.assert_close(d, solve(pv, K, backend), atol=0, rtol=0)
        # No conflict with any task, up to the ridge: G̃w = (K / tr K + reg·I) w ≥ 0.
        Kn = K / K.trace() + 1e-4 * torch.eye(T, dtype=torch.float64)
        for weights in (w, d):
            assert (Kn @ weights >= -1e-12).all()
    A = agreeing_gram(T, gen)
    torch.testing.assert_close(
        mtl_fast.upgrad_weights(A, backend=backend), torch.full((T,), 1 / T).double()
    )
    torch.testing.assert_close(
        mtl_fast.dualproj_weights(A, backend=backend), torch.full((T,), 1 / T).double()
    )


def test_weightings_bad_arguments_name_them() -> None:
    K = torch.eye(3)
    for fn in (mtl_fast.upgrad_weights, mtl_fast.dualproj_weights):
        with pytest.raises(ValueError, match=r"pref must have shape \(\.\.\., 3\)"):
            fn(K, pref=torch.ones(4))
        with pytest.raises(TypeError, match="pref must have dtype"):
            fn(K, pref=torch.ones(3, dtype=torch.int64))
        with pytest.raises(TypeError, match=r"pref must be a torch\.Tensor"):
            fn(K, pref=[1.0, 1.0, 1.0])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=r"K must have shape \(\.\.\., T, T\)"):
            fn(torch.ones(3, 4))
        with pytest.raises(TypeError, match=r"K must be a torch\.Tensor"):
            fn(np.eye(3))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="reg_eps"):
            fn(K, reg_eps=-1.0)
        with pytest.raises(mtl_fast.NonFiniteError, match=r"pref is not finite .* \[1\]"):
            fn(K, pref=torch.tensor([1.0, float("nan"), 0.0]))
        with pytest.raises(mtl_fast.NonFiniteError, match=r"Gram matrix K .* \[2\]"):
            fn(torch.diag(torch.tensor([1.0, 1.0, float("inf")])))
        with pytest.raises(ValueError, match="at least one task"):
            fn(torch.zeros(0, 0))


# --- bad input -------------------------------------------------------------------------------


def test_bad_arguments_name_them() -> None:
    G = torch.eye(3)
    U = torch.ones(2, 3)
    cases: list[tuple[type[Exception], str, dict[str, object], tuple[object, ...]]] = [
        (ValueError, r"U must have shape \(\.\.\., R, 3\)", {}, (torch.ones(2, 4), G)),
        (ValueError, r"G must have shape \(\.\.\., T, T\)", {}, (U, torch.ones(3, 4))),
        (ValueError, r"G must have shape \(\.\.\., T, T\)", {}, (U, torch.ones(3))),
        (TypeError, "U must have dtype", {}, (torch.ones(2, 3, dtype=torch.int64), G)),
        (TypeError, "G must be a torch.Tensor", {}, (U, [[1.0]])),
        (ValueError, "U must have shape", {}, (torch.tensor(1.0), G)),
        (ValueError, "reg_eps must be a finite number", {"reg_eps": -1.0}, (U, G)),
        (ValueError, "norm_eps must be a finite number", {"norm_eps": float("nan")}, (U, G)),
        (ValueError, "tol must be a finite number", {"tol": float("inf")}, (U, G)),
        (ValueError, "max_iter must be an int", {"max_iter": -1}, (U, G)),
        (ValueError, "max_iter must be an int", {"max_iter": 2.5}, (U, G)),
        (ValueError, "at least one task", {}, (torch.ones(2, 0), torch.ones(0, 0))),
        (ValueError, "do not broadcast", {}, (torch.ones(4, 2, 3), torch.eye(3).expand(5, 3, 3))),
        (ValueError, "backend must be", {"backend": "nope"}, (U, G)),
    ]
    for exc, match, kw, args in cases:
        with pytest.raises(exc, match=match):
            mtl_fast.dual_cone_projection(*args, **kw)  # type: ignore[call-overload]


# --- convergence -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_return_converged_flags_rows_that_ran_out(backend: str) -> None:
    T = 8 if backend == "triton" else 24
    usable(backend, T)
    gen = torch.Generator().manual_seed(21)
    G = psd_with_rank(T, T // 3, gen)  # rank-deficient: several exchanges per row
    U = rows(T, gen)
    W, conv = mtl_fast.dual_cone_projection(U, G, backend=backend, return_converged=True)
    assert conv.shape == (U.shape[0],) and conv.dtype == torch.bool and conv.all()
    torch.testing.assert_close(W, solve(U, G, backend), atol=0, rtol=0)
    _, iters, _ = project(U[None], G[None], EARLY)
    assert iters.max() >= 2
    W1, conv1 = mtl_fast.dual_cone_projection(
        U, G.float(), backend=backend, max_iter=1, return_converged=True
    )
    assert W1.dtype == torch.float32
    # Exactly the rows that need more than one factorisation are flagged.
    assert torch.equal(conv1, iters[0] <= 1)
    w, c = mtl_fast.dual_cone_projection(U[0], G, backend=backend, return_converged=True)
    assert c.shape == () and bool(c) and w.shape == (T,)


# --- the reference: sync-free form ----------------------------------------------------------


def test_sync_free_form_agrees_with_early_exit() -> None:
    gen = torch.Generator().manual_seed(3)
    T = 12
    Gs = torch.stack(list(kinds(T, gen).values()))
    U = torch.randn(len(Gs), 5, T, generator=gen, dtype=torch.float64)
    early, it_e, conv_e = project(U, Gs, EARLY)
    fixed, it_f, conv_f = project(U, Gs, FIXED)
    assert conv_e.all() and conv_f.all()
    assert torch.equal(it_e, it_f)
    assert rel_err(fixed, early) <= 1e-11  # the same iterates, up to BLAS paths


def test_sync_free_form_has_no_host_sync() -> None:
    """The form a GPU runs compiles as one graph: a host read-back (.item(), bool(),
    data-dependent Python control flow) would be a graph break and fail fullgraph=True."""
    gen = torch.Generator().manual_seed(4)
    U = torch.randn(2, 3, 5, generator=gen, dtype=torch.float64)
    G = torch.stack([psd_with_rank(5, 5, gen), conflicting_gram(5, gen)])
    run = functools.partial(_bpp, max_iter=4, tol=1e-10, sync_free=True)
    Gn = normalized_gram(G, 1e-4, 1e-4)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(run, fullgraph=True, backend="eager")
        for a, b in zip(compiled(U, Gn), run(U, Gn)):
            torch.testing.assert_close(a, b)
    finally:
        torch._dynamo.reset()


def test_early_exit_form_is_not_sync_free() -> None:
    """Guard for the check above: the CPU form does read a value back, and dynamo notices."""
    gen = torch.Generator().manual_seed(4)
    U = torch.randn(1, 3, 5, generator=gen, dtype=torch.float64)
    Gn = normalized_gram(conflicting_gram(5, gen), 1e-4, 1e-4)[None]
    run = functools.partial(_bpp, max_iter=4, tol=1e-10, sync_free=False)
    torch._dynamo.reset()
    try:
        with pytest.raises(Exception):  # noqa: B017 - dynamo's error class varies by version
            torch.compile(run, fullgraph=True, backend="eager")(U, Gn)
    finally:
        torch._dynamo.reset()


# --- the compiled CPU solver -----------------------------------------------------------------

needs_library = pytest.mark.skipif(
    cpu.unavailable_reason() is not None,
    reason=f"the CPU solver is not built: {cpu.unavailable_reason()}",
)


@needs_library
@pytest.mark.parametrize("T", SIZES)
def test_cpu_takes_the_reference_iterates(T: int) -> None:
    """Same algorithm and exchange rules: the factorisation counts per row agree except where
    rounding decides a comparison (measured: < 2% of rows)."""
    from mtl_fast.kernels.cpu.dual_cone import solve as cpu_solve

    gen = torch.Generator().manual_seed(T)
    Gs = torch.stack(list(kinds(T, gen).values()))
    U = torch.stack([rows(T, gen) for _ in range(len(Gs))])
    W, iters, unconverged = cpu_solve(U, Gs, EARLY, counts=True)
    W_ref, it_ref, conv_ref = project(U, Gs, EARLY)
    assert unconverged == 0 and conv_ref.all()
    assert rel_err(W, W_ref) <= 1e-9
    assert iters is not None and (iters != it_ref).float().mean() <= 0.02


@needs_library
def test_cpu_bound_block_path() -> None:
    """Many mutually conflicting tasks: the C++ solver factors H_AA (H = G̃⁻¹) when the bound
    set is the smaller one; same answer as the reference and KKT."""
    gen = torch.Generator().manual_seed(9)
    T = 48
    J = torch.eye(T, dtype=torch.float64) - 1.0 / T + 1e-6 * torch.randn(T, T, generator=gen)
    G = J @ J.T
    U = torch.eye(T, dtype=torch.float64) / T
    W = solve(U, G, "cpu")
    assert rel_err(W, solve(U, G, "reference")) <= 1e-9
    assert_kkt(U, G, W, tol=1e-9)


@needs_library
def test_cpu_rows_that_start_alike_reuse_factors() -> None:
    """Two opposed groups of tasks: the rows of one group start from the same free set (the
    other group), so the solver updates a kept factor instead of refactoring; the kept factors
    belong to one problem (the next one gets fresh ones). Same answers and iterates."""
    from mtl_fast.kernels.cpu.dual_cone import solve as cpu_solve

    gen = torch.Generator().manual_seed(12)
    T, P = 64, 264
    s = torch.where(torch.arange(T) % 2 == 0, 1.0, -0.5).double()[:, None]
    grams = []
    for _ in range(3):
        J = s * torch.randn(1, P, generator=gen, dtype=torch.float64)
        J = J + 0.7 * torch.randn(T, P, generator=gen, dtype=torch.float64)
        grams.append(J @ J.T)
    G = torch.stack(grams)
    U = (torch.eye(T, dtype=torch.float64) / T).expand(3, T, T)
    W, iters, bad = cpu_solve(U, G, EARLY, counts=True)
    W_ref, it_ref, _ = project(U, G, EARLY)
    assert bad == 0 and rel_err(W, W_ref) <= 1e-9
    assert iters is not None and (iters != it_ref).float().mean() <= 0.02
    for b in range(3):
        assert_kkt(U[b], G[b], W[b], tol=1e-9)


@needs_library
def test_cpu_library_rejects_bad_arguments() -> None:
    fn = loader.dual_cone_library()
    assert not isinstance(fn, str)
    U = torch.eye(3, dtype=torch.float64)[None]
    G = torch.eye(3, dtype=torch.float64)[None]
    W = torch.empty_like(U)
    args = (1e-4, 1e-4, 10, 1e-10, None)
    assert fn(U.data_ptr(), G.data_ptr(), W.data_ptr(), 1, 3, 3, *args) == 0
    bad = [(-1, 3, 3), (1, -1, 3), (1, 3, -1), (1, 3, 4097)]
    for b, r, t in bad:
        assert fn(U.data_ptr(), G.data_ptr(), W.data_ptr(), b, r, t, *args) == -1
    for eps in ((-1.0, 1e-4, 10, 1e-10, None), (1e-4, float("nan"), 10, 1e-10, None)):
        assert fn(U.data_ptr(), G.data_ptr(), W.data_ptr(), 1, 3, 3, *eps) == -1
    assert fn(U.data_ptr(), G.data_ptr(), W.data_ptr(), 1, 3, 3, 1e-4, 1e-4, -1, 1e-10, None) == -1
    assert fn(None, None, None, 1, 3, 3, *args) == -1
    assert fn(None, None, None, 0, 3, 3, *args) == 0  # an empty batch reads nothing
    with pytest.raises(mtl_fast.BackendUnavailableError, match="T ≤ 4096"):
        mtl_fast.dual_cone_projection(
            torch.zeros(1, 4097), torch.zeros(4097, 4097), backend="cpu", check_finite=False
        )


@needs_library
def test_cpu_custom_op_schema_fake_and_compile() -> None:
    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        G = torch.stack([psd_with_rank(6, 6, gen), conflicting_gram(6, gen)]).to(dtype)
        U = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
        args = (U, G, 1e-4, 1e-4, 64, 1e-10)
        torch.library.opcheck(torch.ops.mtl_fast_cpu.dual_cone.default, args)
        G.requires_grad_()
        torch.library.opcheck(torch.ops.mtl_fast_cpu.dual_cone.default, args)
    J = torch.randn(5, 30, generator=gen, dtype=torch.float64)

    def step(J: torch.Tensor) -> torch.Tensor:
        return mtl_fast.combine(J, mtl_fast.upgrad_weights(mtl_fast.gram(J)))

    assert_one_graph(step, J, step(J), "mtl_fast_cpu.dual_cone")
    # No gradient flows through the weights (as in TorchJD, whose projector is numpy).
    Jg = J.clone().requires_grad_()
    w = mtl_fast.upgrad_weights(Jg @ Jg.T)
    assert not w.requires_grad


@needs_library
def test_auto_prefers_cpu_on_cpu_and_triton_on_gpu() -> None:
    assert _dispatch.resolve_name("dual_cone", "auto", torch.device("cpu"), tasks=128) == "cpu"
    gpu = torch.device("cuda")
    # Resolution only (nothing runs on a GPU here): Triton up to its task limit when it can run
    # on a GPU, else the reference.
    triton_status = mtl_fast.backends()["triton"]
    expected = "reference"
    if triton_status.available:
        module = _dispatch._load("triton")
        if not isinstance(module, str) and module.device_reason(gpu) is None:
            expected = "triton"
    assert _dispatch.resolve_name("dual_cone", "auto", gpu, tasks=64) == expected
    assert _dispatch.resolve_name("dual_cone", "auto", gpu, tasks=65) == "reference"


@pytest.fixture
def no_library(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The state of an install without a C++ compiler: no library next to the package."""
    with cpu_library_at(monkeypatch, None):
        yield


@pytest.mark.usefixtures("no_library")
def test_without_the_library_auto_falls_back_to_the_reference() -> None:
    assert _dispatch.resolve_name("dual_cone", "auto", torch.device("cpu")) == "reference"
    K = torch.tensor([[1.0, -2.0], [-2.0, 9.0]])
    torch.testing.assert_close(mtl_fast.upgrad_weights(K), torch.tensor([1.4990, 0.6111]))
    with pytest.raises(mtl_fast.BackendUnavailableError, match=r"backend='cpu'.*not built"):
        mtl_fast.upgrad_weights(K, backend="cpu")


def test_a_library_without_the_solver_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library built before the dual-cone solver existed: refused with the reason."""
    fake = Path(ctypes.util.find_library("c") or "libc.so.6")  # loads, but has no such symbol
    with cpu_library_at(monkeypatch, fake):
        reason = loader.dual_cone_library()
        assert isinstance(reason, str) and "rebuild" in reason


def test_abi_version_matches_the_header() -> None:
    assert_abi_version(
        "dual_cone.h",
        "MTL_DUAL_CONE_ABI_VERSION",
        "mtl_dual_cone_abi_version",
        cpu.DUAL_CONE_ABI_VERSION,
    )


# --- Triton ----------------------------------------------------------------------------------


def test_triton_refuses_more_than_64_tasks() -> None:
    usable("triton", 2)
    with pytest.raises(mtl_fast.BackendUnavailableError, match="T ≤ 64"):
        mtl_fast.upgrad_weights(torch.eye(65), backend="triton")


def test_triton_takes_the_reference_iterates() -> None:
    """After every budget k the kernel's iterate is the reference's (same exchanges)."""
    usable("triton", 6)
    from mtl_fast.kernels.triton.dual_cone import dual_cone as triton_dual_cone

    gen = torch.Generator().manual_seed(8)
    G = torch.stack([psd_with_rank(6, 2, gen), conflicting_gram(6, gen, 0.2)])
    U = torch.stack([rows(6, gen), rows(6, gen)])
    for k in (0, 1, 2, 3, 64):
        budget = dataclasses.replace(FIXED, max_iter=k)
        W_t = triton_dual_cone(U, G, budget)
        W_r, _, _ = project(U, G, budget)
        assert rel_err(W_t, W_r) <= 1e-10, f"budget {k}"


# --- the backend contract --------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_signature_is_the_contract(backend: str) -> None:
    usable(backend)
    module = _dispatch._load(backend)
    assert not isinstance(module, str)
    expected = inspect.signature(CONTRACTS["dual_cone"].__call__)
    params = list(expected.parameters.values())[1:]  # without self
    found = inspect.signature(module.dual_cone)
    assert [(p.name, p.kind) for p in found.parameters.values()] == [
        (p.name, p.kind) for p in params
    ]


SOLVER_DEFAULTS = {
    "norm_eps": 1e-4,
    "reg_eps": 1e-4,
    "max_iter": 64,
    "tol": 1e-10,
    "backend": None,
    "sync_free": None,
}


@pytest.mark.parametrize(
    "op", [mtl_fast.dual_cone_projection, mtl_fast.upgrad_weights, mtl_fast.dualproj_weights]
)
def test_dual_cone_ops_spell_every_solver_option(op) -> None:  # type: ignore[no-untyped-def]
    """help() and inspect show the solver's keyword options with their defaults, keyword-only;
    a misspelled keyword is a TypeError naming it."""
    params = inspect.signature(op).parameters
    own = (
        {"return_converged": False, "check_finite": None}
        if op is mtl_fast.dual_cone_projection
        else {"pref": None, "check_finite": None}
    )
    first = ["U", "G"] if op is mtl_fast.dual_cone_projection else ["K"]
    assert sorted(params) == sorted([*first, *own, *SOLVER_DEFAULTS])
    for name, default in {**SOLVER_DEFAULTS, **own}.items():
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default == default, name
    args = (torch.eye(2), torch.eye(2)) if op is mtl_fast.dual_cone_projection else (torch.eye(2),)
    with pytest.raises(TypeError, match="max_iters"):
        op(*args, max_iters=3)
    for name, bad in (("norm_eps", -1.0), ("max_iter", -1), ("tol", -1.0)):
        with pytest.raises(ValueError, match=name):
            op(*args, **{name: bad})
    with pytest.raises(TypeError, match="sync_free"):
        op(*args, sync_free=1)


def test_dual_cone_ops_name_the_argument_and_the_tasks() -> None:
    J = torch.randn(4, 10)
    J[2, 5] = float("nan")
    K = mtl_fast.gram(J, check_finite=False)
    for op in (mtl_fast.upgrad_weights, mtl_fast.dualproj_weights):
        with pytest.raises(mtl_fast.NonFiniteError, match=r"Gram matrix K .* \[2\]"):
            op(K)
        assert torch.isnan(op(K, check_finite=False)).all()  # opted out: NaN, never garbage
    with pytest.raises(mtl_fast.NonFiniteError, match=r"Gram matrix G .* \[2\]"):
        mtl_fast.dual_cone_projection(torch.eye(4), K)
    with pytest.raises(ValueError, match="U is on meta but G is on cpu"):
        mtl_fast.dual_cone_projection(torch.eye(3, device="meta"), torch.eye(3))
    with pytest.raises(ValueError, match="pref is on meta but K is on cpu"):
        mtl_fast.upgrad_weights(torch.eye(3), pref=torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match=r"U must have shape \(\.\.\., R, 3\) or \(3,\)"):
        mtl_fast.dual_cone_projection(torch.ones(5), torch.eye(3))
