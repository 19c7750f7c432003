"""Gram-space aggregators (PCGrad, IMTL-G, CAGrad, Nash-MTL, Aligned-MTL, ConFIG): the
properties each paper claims, agreement with TorchJD 0.18 (and the official ``conflictfree``
package for ConFIG, cvxpy/Clarabel for CAGrad's inner problem), every backend against the
reference, batching, scale behaviour, the sync-free form and bad input.

Comparisons that need cvxpy (TorchJD's CAGrad and Nash-MTL) or ``conflictfree`` skip when the
package is missing.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

import mtl_fast
from mtl_fast._core.contracts import AGGREGATOR_OPS
from mtl_fast._core.dispatch import _load

F64 = torch.float64
KINDS = [
    "random",
    "conflicting",
    "low-rank",
    "rank-1",
    "duplicated",
    "opposite",
    "zero-row",
    "zero",
]
SIZES = [1, 2, 3, 5, 10, 40]
BACKENDS = ["reference", "cpu", "triton"]
# Sizes the Triton interpreter runs in reasonable time (every program is Python).
TRITON_SIZES = [1, 2, 3, 5]


def require_backend(backend: str, op: str) -> None:
    """Skip unless ``backend`` is available here and implements ``op``."""
    loaded = _load(backend)
    if isinstance(loaded, str):
        pytest.skip(f"{backend}: {loaded}")
    if op not in loaded.OPS:
        pytest.skip(f"{backend} does not implement {op}")
    reason = loaded.device_reason(torch.device("cpu"))
    if reason is not None:
        pytest.skip(f"{backend}: {reason}")


# ----------------------------------------------------------------------------------------------
# Samplers and checks
# ----------------------------------------------------------------------------------------------


def jacobian(T: int, kind: str, gen: torch.Generator, P: int | None = None) -> Tensor:
    """A (T, P) float64 Jacobian of the given kind."""
    P = P or 3 * T + 5

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=gen, dtype=F64)

    if kind == "random":
        return randn(T, P)
    if kind == "positive":  # every pair of gradients at an acute angle
        return randn(T, P).abs()
    if kind == "conflicting":  # near-parallel gradients of both signs
        signs = torch.where(torch.rand(T, generator=gen) < 0.5, -1.0, 1.0).to(F64)
        signs[0], signs[-1] = 1.0, -1.0
        return signs[:, None] * randn(P) + 0.3 * randn(T, P)
    if kind == "low-rank":
        r = max(1, T // 3)
        return randn(T, r) @ randn(r, P)
    if kind == "rank-1":
        return randn(T, 1) * randn(1, P)
    if kind == "duplicated":
        J = randn(T, P)
        J[T // 2 :] = J[: T - T // 2].clone()
        return J
    if kind == "opposite":
        J = randn(T, P)
        J[T // 2 :] = -J[: T - T // 2].clone()
        return J
    if kind == "zero-row":
        J = randn(T, P)
        J[0] = 0.0
        return J
    if kind == "zero":
        return torch.zeros(T, P, dtype=F64)
    raise ValueError(kind)


def kinds_batch(T: int, gen: torch.Generator, kinds: list[str] = KINDS) -> tuple[Tensor, Tensor]:
    """(len(kinds), T, P) Jacobians of every kind and their Grams."""
    J = torch.stack([jacobian(T, kind, gen, P=3 * T + 5) for kind in kinds])
    return J, J @ J.mT


def seeded_jacobian(T: int, kind: str, seed: int) -> tuple[torch.Generator, Tensor, Tensor]:
    """A (T, P) Jacobian of the given kind drawn from a generator seeded with ``seed``: the
    generator (for further draws), the Jacobian and its Gram."""
    gen = torch.Generator().manual_seed(seed)
    J = jacobian(T, kind, gen)
    return gen, J, J @ J.T


def every_kind(T: int, seed: int) -> list[tuple[str, torch.Generator, Tensor, Tensor]]:
    """(kind, gen, J, K) for every kind of :data:`KINDS`, each drawn by :func:`seeded_jacobian`
    with the seed ``seed · T`` plus the kind's index."""
    return [(kind, *seeded_jacobian(T, kind, seed * T + i)) for i, kind in enumerate(KINDS)]


def direction_error(J: Tensor, c: Tensor, c_ref: Tensor) -> float:
    """‖Jᵀ(c − c_ref)‖ relative to max(‖Jᵀc_ref‖, ‖J‖_F · 1e-3)."""
    c, c_ref = c.to(F64), c_ref.to(F64)
    diff = (J.T @ (c - c_ref)).norm()
    return float(diff / max(float((J.T @ c_ref).norm()), 1e-3 * float(J.norm()), 1e-300))


def torchjd_pcgrad_orders(T: int, seed: int) -> Tensor:
    """The orders TorchJD's PCGradWeighting draws after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return torch.stack([torch.randperm(T) for _ in range(T)])


def cagrad_problem(K: Tensor, c: float) -> tuple[Tensor, Tensor, Tensor]:
    """TorchJD's normalised inner problem: K / trace K, b = K1/T, φ = c·sqrt(1ᵀK1)/T."""
    T = K.shape[-1]
    Kn = K.double() / K.double().trace()
    return Kn, Kn.sum(dim=1) / T, c * Kn.sum().clamp_min(0).sqrt() / T


def cagrad_inner_point(weights: Tensor) -> Tensor:
    """w* recovered from CAGrad weights 1/T + λw* (w* on the simplex)."""
    T = weights.shape[-1]
    extra = weights.double() - 1.0 / T
    return extra / extra.sum()


def cagrad_objective(Kn: Tensor, b: Tensor, phi: Tensor, w: Tensor) -> float:
    return float(b @ w + phi * (w @ Kn @ w).clamp_min(0).sqrt())


def nash_residual(K: Tensor, alpha: Tensor) -> float:
    """max_i |α_i (Kα)_i − 1|: 0 at the Nash bargaining solution."""
    alpha = alpha.double()
    return float((alpha * (K.double() @ alpha) - 1).abs().max())


# ----------------------------------------------------------------------------------------------
# Every backend against the reference
# ----------------------------------------------------------------------------------------------


def _call(
    op: str, K: Tensor, backend: str, order: Tensor | None = None, nash_iter: int = 50
) -> Tensor:
    """One op on K with the settings the cross-backend tests use."""
    if op == "pcgrad":
        return mtl_fast.pcgrad_weights(K, order=order, backend=backend)
    if op == "imtlg":
        return mtl_fast.imtlg_weights(K, backend=backend)
    if op == "cagrad":
        return mtl_fast.cagrad_weights(K, c=0.5, backend=backend)
    if op == "nash_mtl":
        step = mtl_fast.nash_mtl_step(K, max_norm=0.0, max_iter=nash_iter, backend=backend)
        return torch.cat(step, dim=-1)
    if op == "aligned_mtl":
        return torch.cat(
            [
                mtl_fast.aligned_mtl_weights(K, scale_mode=m, backend=backend)
                for m in ("min", "median")
            ]
        )
    if op == "config":
        return mtl_fast.config_weights(K, backend=backend)
    raise ValueError(op)


# Where a method's answer is not unique or sits on a threshold (duplicated tasks: CAGrad's w*
# is a face; rank-deficient Grams: an eigenvalue at the pseudo-inverse cut-off), two correct
# solvers may legitimately differ: the weights are compared on the kinds where they are unique,
# the directions everywhere.
UNIQUE_KINDS = {
    "pcgrad": KINDS,
    "imtlg": ["random", "conflicting", "zero-row", "zero", "opposite", "duplicated"],
    "cagrad": ["random", "conflicting", "low-rank", "rank-1", "opposite", "zero-row", "zero"],
    "nash_mtl": KINDS,
    "aligned_mtl": ["random", "conflicting", "zero-row", "zero", "duplicated", "opposite"],
    "config": ["random", "conflicting", "zero-row", "zero", "duplicated", "opposite"],
}


@pytest.mark.parametrize("op", AGGREGATOR_OPS)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_backend_agrees_with_the_reference(op: str, backend: str) -> None:
    require_backend(backend, op)
    sizes = TRITON_SIZES if backend == "triton" else SIZES
    # Under the interpreter every Newton step of a problem without a solution costs; the same
    # budget on both sides compares the same computation.
    nash_iter = 15 if backend == "triton" else 50
    for T in sizes:
        gen = torch.Generator().manual_seed(900 + T)
        kinds = UNIQUE_KINDS[op]
        _, K = kinds_batch(T, gen, kinds)
        order = mtl_fast.pcgrad_order((len(kinds),), T, generator=gen)
        for dtype in (F64, torch.float32):
            Kt = K.to(dtype)
            got = _call(op, Kt, backend, order, nash_iter)
            want = _call(op, Kt, "reference", order, nash_iter)
            assert got.dtype == want.dtype == dtype
            assert torch.isfinite(got).all()
            scale = max(1.0, float(want.abs().max()))
            # fp32 K holds rank-deficient Grams only to 1e-7: solvers may branch differently.
            atol = (1e-7 if op in ("cagrad", "nash_mtl") else 1e-9) if dtype == F64 else 2e-3
            torch.testing.assert_close(
                got.double(), want.double(), rtol=0, atol=atol * scale, msg=f"{op} T={T} {dtype}"
            )


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_backends_give_the_same_nash_state_and_fallback(backend: str) -> None:
    require_backend(backend, "nash_mtl")
    gen = torch.Generator().manual_seed(5)
    T = 4
    J = torch.stack([jacobian(T, k, gen) for k in ("positive", "opposite", "zero", "random")])
    K = J @ J.mT
    prev = torch.rand(4, T, generator=gen, dtype=F64) + 0.5
    for max_iter in (0, 1, 3, 50):
        got = mtl_fast.nash_mtl_step(K, prev_alpha=prev, max_iter=max_iter, backend=backend)
        want = mtl_fast.nash_mtl_step(K, prev_alpha=prev, max_iter=max_iter, backend="reference")
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-12)


def test_auto_prefers_the_compiled_library_on_the_cpu() -> None:
    from mtl_fast._core.dispatch import resolve_name

    cpu = _load("cpu")
    for op in AGGREGATOR_OPS:
        expected = "cpu" if not isinstance(cpu, str) and op in cpu.OPS else "reference"
        assert resolve_name(op, "auto", torch.device("cpu"), tasks=10) == expected


# ----------------------------------------------------------------------------------------------
# PCGrad
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", SIZES)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_pcgrad_matches_torchjd_given_its_order(T: int, backend: str, aggregation) -> None:
    require_backend(backend, "pcgrad")
    for kind, _, J, K in every_kind(T, 100):
        for seed in range(3):
            order = torchjd_pcgrad_orders(T, seed)
            torch.manual_seed(seed)
            expected = aggregation.PCGradWeighting()(K)
            got = mtl_fast.pcgrad_weights(K, order=order, backend=backend)
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=kind)
        # float32: TorchJD computes in float32, we compute in float64.
        K32 = K.float()
        order = torchjd_pcgrad_orders(T, 7)
        torch.manual_seed(7)
        expected = aggregation.PCGradWeighting()(K32)
        got = mtl_fast.pcgrad_weights(K32, order=order, backend=backend)
        assert got.dtype == torch.float32
        assert direction_error(J, got, expected) < 1e-3, kind


def test_pcgrad_generator_is_reproducible() -> None:
    gen = torch.Generator().manual_seed(0)
    J = jacobian(6, "conflicting", gen)
    K = J @ J.T
    a = mtl_fast.pcgrad_weights(K, generator=torch.Generator().manual_seed(5))
    b = mtl_fast.pcgrad_weights(K, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    order = mtl_fast.pcgrad_order((), 6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(mtl_fast.pcgrad_weights(K, order=order), a)
    draws = {
        tuple(mtl_fast.pcgrad_weights(K, generator=torch.Generator().manual_seed(s)).tolist())
        for s in range(8)
    }
    assert len(draws) > 1, "the order should matter for conflicting gradients"


def test_pcgrad_order_is_a_permutation_per_task() -> None:
    order = mtl_fast.pcgrad_order((4, 2), 7, generator=torch.Generator().manual_seed(1))
    assert order.shape == (4, 2, 7, 7)
    assert torch.equal(order.sort(dim=-1).values, torch.arange(7).expand_as(order))


@pytest.mark.parametrize("backend", BACKENDS)
def test_pcgrad_two_task_guarantee_and_no_conflict_case(backend: str) -> None:
    require_backend(backend, "pcgrad")
    gen = torch.Generator().manual_seed(2)
    # Yu et al. (2020): with two tasks the update has a non-negative inner product with both
    # gradients, and each projected gradient is orthogonal to the other task's gradient.
    J = torch.stack([jacobian(2, "conflicting", gen) for _ in range(12)])
    K = J @ J.mT
    c = mtl_fast.pcgrad_weights(K, generator=gen, backend=backend)
    Kc = (K @ c.unsqueeze(-1)).squeeze(-1)
    assert (Kc >= -1e-12 * K.diagonal(dim1=1, dim2=2).amax(-1, keepdim=True)).all()
    conflict = K[:, 0, 1] < 0
    residual = K[:, 0, 1] + K[:, 1, 1] * (c[:, 1] - 1)
    assert (residual[conflict].abs() <= 1e-12 * K.abs().amax(dim=(1, 2))[conflict]).all()
    # Gradients that never conflict are left alone: c = 1.
    for T in (3, 5):
        Jp = jacobian(T, "positive", gen)
        c = mtl_fast.pcgrad_weights(Jp @ Jp.T, generator=gen, backend=backend)
        torch.testing.assert_close(c, torch.ones(T, dtype=F64))


@pytest.mark.parametrize("T", [3, 5, 10])
def test_pcgrad_last_projection_removes_the_conflict(T: int) -> None:
    """After task i's loop, its projected gradient does not conflict with the last task met,
    and the weights are the sum of these per-task loops."""
    gen = torch.Generator().manual_seed(T)
    J = jacobian(T, "conflicting", gen)
    K = J @ J.T
    order = mtl_fast.pcgrad_order((), T, generator=gen)
    total = torch.zeros(T, dtype=F64)
    for i in range(T):
        c_i = torch.zeros(T, dtype=F64)
        c_i[i] = 1.0
        for j in order[i].tolist():
            if j != i and float(K[j] @ c_i) < 0:
                c_i[j] -= float(K[j] @ c_i) / K[j, j]
        last = [j for j in order[i].tolist() if j != i][-1]
        assert float(K[last] @ c_i) >= -1e-12 * float(K.diagonal().max())
        total += c_i
    torch.testing.assert_close(
        mtl_fast.pcgrad_weights(K, order=order), total, rtol=1e-12, atol=1e-12
    )


# ----------------------------------------------------------------------------------------------
# IMTL-G
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", SIZES)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_imtlg_matches_torchjd(T: int, backend: str, aggregation) -> None:
    require_backend(backend, "imtlg")
    for kind, _, _, K in every_kind(T, 200):
        expected = aggregation.IMTLGWeighting()(K)
        got = mtl_fast.imtlg_weights(K, backend=backend)
        scale = max(1.0, float(expected.abs().max()))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-9 * scale, msg=kind)
        # float32: TorchJD's pinv and its absolute |Σv| < 1e-12 test run in float32, where
        # opposite gradients leave |Σv| at rounding noise above 1e-12 (it returns noise/noise).
        if kind in ("random", "conflicting", "zero-row", "zero"):
            expected32 = aggregation.IMTLGWeighting()(K.float())
            got32 = mtl_fast.imtlg_weights(K.float(), backend=backend)
            torch.testing.assert_close(got32, expected32, rtol=0, atol=1e-3 * scale, msg=kind)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_imtlg_equal_projections_on_unit_gradients(backend: str) -> None:
    require_backend(backend, "imtlg")
    for T in (2, 3, 5, 10, 40):
        for kind in ("random", "conflicting", "duplicated", "positive"):
            _, J, K = seeded_jacobian(T, kind, T)
            c = mtl_fast.imtlg_weights(K, backend=backend)
            proj = (J @ (J.T @ c)) / J.norm(dim=1)
            torch.testing.assert_close(proj, proj.mean().expand(T), rtol=1e-8, atol=0)
            assert abs(float(c.sum()) - 1) < 1e-10


# ----------------------------------------------------------------------------------------------
# Aligned-MTL
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", SIZES)
@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_aligned_mtl_matches_torchjd(T: int, scale_mode: str, backend: str, aggregation) -> None:
    require_backend(backend, "aligned_mtl")
    for kind, gen, _, K in every_kind(T, 300):
        expected = aggregation.AlignedMTLWeighting(scale_mode=scale_mode)(K)
        got = mtl_fast.aligned_mtl_weights(K, scale_mode=scale_mode, backend=backend)  # type: ignore[arg-type]
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=kind)
        pref = torch.rand(T, generator=gen, dtype=F64) + 0.1
        expected = aggregation.AlignedMTLWeighting(pref_vector=pref, scale_mode=scale_mode)(K)
        got = mtl_fast.aligned_mtl_weights(K, pref=pref, scale_mode=scale_mode, backend=backend)  # type: ignore[arg-type]
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12, msg=kind)


@pytest.mark.parametrize("scale_mode", ["min", "median", "rmse"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_aligned_mtl_balanced_gram_has_equal_eigenvalues(scale_mode: str, backend: str) -> None:
    """c is linear in the preference: its columns for p = e_j give B, and BKB = σ·Π_range."""
    require_backend(backend, "aligned_mtl")
    for T in (2, 3, 5, 10, 40):
        for kind in ("random", "conflicting", "low-rank", "duplicated"):
            _, _, K = seeded_jacobian(T, kind, T)
            B = mtl_fast.aligned_mtl_weights(
                K.expand(T, T, T),
                pref=torch.eye(T, dtype=F64),
                scale_mode=scale_mode,  # type: ignore[arg-type]
                backend=backend,
            ).T
            eig = torch.linalg.eigvalsh(B @ K @ B)
            rank = int(torch.linalg.matrix_rank(K, hermitian=True))
            top = eig[-rank:]
            torch.testing.assert_close(top, top.mean().expand(rank), rtol=1e-7, atol=0)
            if rank < T:
                assert eig[:-rank].abs().max() <= 1e-7 * float(top.mean())
            lam = torch.linalg.eigvalsh(K)[-rank:]
            sigma = {"min": lam.min(), "median": lam.median(), "rmse": lam.mean()}[scale_mode]
            torch.testing.assert_close(top.mean(), sigma, rtol=1e-7, atol=0)


def test_aligned_mtl_zero_gram_returns_the_preference() -> None:
    pref = torch.tensor([0.2, 0.3, 0.5], dtype=F64)
    torch.testing.assert_close(
        mtl_fast.aligned_mtl_weights(torch.zeros(3, 3, dtype=F64), pref=pref), pref
    )
    torch.testing.assert_close(
        mtl_fast.aligned_mtl_weights(torch.zeros(3, 3)), torch.full((3,), 1 / 3)
    )


# ----------------------------------------------------------------------------------------------
# ConFIG
# ----------------------------------------------------------------------------------------------


def _conflictfree_update(J: Tensor) -> Tensor:
    grad_operator = pytest.importorskip("conflictfree.grad_operator")
    weight_model = pytest.importorskip("conflictfree.weight_model")

    class EqualWeight64(weight_model.EqualWeight):  # type: ignore[misc, name-defined]
        """The package's equal weights in the gradients' dtype (its own are float32, and its
        ``ConFIG_update`` then raises on float64 gradients)."""

        def get_weights(
            self, gradients: Tensor, losses: object = None, device: object = None
        ) -> Tensor:
            return torch.ones(gradients.shape[0], dtype=gradients.dtype, device=gradients.device)

    return grad_operator.ConFIG_update(J, weight_model=EqualWeight64())


@pytest.mark.parametrize("T", SIZES)
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_config_matches_torchjd_and_conflictfree(T: int, backend: str, aggregation) -> None:
    require_backend(backend, "config")
    for kind, _, J, K in every_kind(T, 400):
        c = mtl_fast.config_weights(K, backend=backend)
        d = J.T @ c
        scale = max(float(J.norm()), 1e-300)
        expected = aggregation.ConFIG()(J)
        # Where we return 0 (opposite gradients, ...), the J-form ones return rounding noise;
        # rank-deficient J leaves their pinv/lstsq at the mercy of rounding too.
        tol = 1e-9 if kind in ("random", "conflicting", "duplicated", "zero-row", "zero") else 1e-6
        assert float((d - expected).norm()) <= tol * scale, kind
        # Where we return 0, the package normalises rounding noise to a unit vector and scales
        # it by the sum of projections: no usable answer to compare with there.
        if c.abs().max() > 0:
            try:
                official = _conflictfree_update(J)
            except pytest.skip.Exception:
                continue
            assert float((d - official).norm()) <= tol * scale, kind


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_config_equal_positive_cosines_and_projection_length(backend: str) -> None:
    """ConFIG's guarantee: no task conflicts with the update (equal positive cosines), whose
    length is the sum of the projections; with a preference vector the cosines follow it."""
    require_backend(backend, "config")
    for T in (2, 3, 5, 10, 40):
        for kind in ("random", "conflicting", "positive", "zero-row"):
            gen, J, K = seeded_jacobian(T, kind, T)
            d = J.T @ mtl_fast.config_weights(K, backend=backend)
            live = J.norm(dim=1) > 0
            cos = (J[live] @ d) / (J[live].norm(dim=1) * d.norm())
            assert (cos > 0).all()
            torch.testing.assert_close(cos, cos.mean().expand_as(cos), rtol=1e-9, atol=0)
            torch.testing.assert_close(d.norm(), (J @ d).sum() / d.norm(), rtol=1e-10, atol=0)
            pref = torch.rand(T, generator=gen, dtype=F64) + 0.5
            d = J.T @ mtl_fast.config_weights(K, pref=pref, backend=backend)
            cos = (J[live] @ d) / (J[live].norm(dim=1) * d.norm())
            ratio = cos / pref[live]
            torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio), rtol=1e-8, atol=0)


def test_config_two_tasks_matches_the_closed_form_operator() -> None:
    grad_operator = pytest.importorskip("conflictfree.grad_operator")
    gen = torch.Generator().manual_seed(0)
    for kind in ("random", "conflicting", "positive"):
        J = jacobian(2, kind, gen).float()
        d = J.double().T @ mtl_fast.config_weights(J.double() @ J.double().T)
        official = grad_operator.ConFIG_update_double(J[0], J[1])
        assert float((d - official.double()).norm()) <= 1e-5 * float(J.norm())


@pytest.mark.parametrize("op", ["imtlg", "config"])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_imtlg_and_config_zero_direction_conventions(op: str, backend: str) -> None:
    """Zero gradients and two opposite ones: c = 0; a single task: c = 1."""
    require_backend(backend, op)
    weights = {"imtlg": mtl_fast.imtlg_weights, "config": mtl_fast.config_weights}[op]
    assert weights(torch.zeros(3, 3), backend=backend).tolist() == [0.0, 0.0, 0.0]
    for scale in (1.0, 2.0):
        opposite = scale * torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=F64)
        assert weights(opposite, backend=backend).abs().max() == 0
    for dtype in (torch.float32, F64):
        one = weights(torch.tensor([[4.0]], dtype=dtype), backend=backend)
        assert one.dtype == dtype and one.tolist() == [1.0]


# ----------------------------------------------------------------------------------------------
# CAGrad
# ----------------------------------------------------------------------------------------------


def slsqp_cagrad(Kn: Tensor, b: Tensor, phi: Tensor) -> float:
    """min over the simplex of bᵀw + φ·sqrt(wᵀKw) by SLSQP from several starts (scipy)."""
    minimize = pytest.importorskip("scipy.optimize").minimize
    K_, b_, p_ = Kn.numpy(), b.numpy(), float(phi)
    T = K_.shape[0]

    def f(w: np.ndarray) -> float:
        return float(b_ @ w + p_ * np.sqrt(max(w @ K_ @ w, 0.0)))

    best = np.inf
    for x0 in [np.full(T, 1.0 / T), *np.eye(T)[: min(T, 5)]]:
        res = minimize(
            f,
            x0,
            bounds=[(0.0, 1.0)] * T,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
            method="SLSQP",
            options={"ftol": 1e-15, "maxiter": 1000},
        )
        w = np.clip(res.x, 0, None)
        best = min(best, f(w / w.sum()))
    return best


def clarabel_cagrad(Kn: Tensor, b: Tensor, phi: Tensor) -> Tensor:
    """The same problem by cvxpy/Clarabel at tight tolerances."""
    cp = pytest.importorskip("cvxpy")
    K_ = Kn.numpy()
    lam, V = np.linalg.eigh(K_)
    R = V * np.sqrt(np.clip(lam, 0, None))
    w = cp.Variable(K_.shape[0])
    problem = cp.Problem(
        cp.Minimize(b.numpy() @ w + float(phi) * cp.norm(R.T @ w, 2)), [w >= 0, cp.sum(w) == 1]
    )
    problem.solve(cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=500)
    return torch.from_numpy(np.asarray(w.value))


CAGRAD_KINDS = ["random", "conflicting", "low-rank", "duplicated", "positive", "opposite", "rank-1"]


@pytest.mark.parametrize("T", [2, 3, 5, 10, 40])
@pytest.mark.parametrize("c", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_cagrad_reaches_the_optimum_and_kkt(T: int, c: float, backend: str) -> None:
    """The inner problem is solved: Frank-Wolfe gap ≈ 0, no lower objective by SLSQP, and the
    update d̃ = g̃₀ + φ·g̃_w/‖g̃_w‖ has min_i g̃_iᵀd̃ equal to the optimum (strong duality)."""
    require_backend(backend, "cagrad")
    for kind in CAGRAD_KINDS:
        _, _, K = seeded_jacobian(T, kind, 500 * T + len(kind))
        weights = mtl_fast.cagrad_weights(K, c=c, backend=backend)
        Kn, b, phi = cagrad_problem(K, c)
        if weights.abs().max() == 0:
            # Pareto-stationary (TorchJD's zero rule): the optimum is 0, g_w = 0 in the hull.
            if T <= 10:
                assert slsqp_cagrad(Kn, b, phi) >= -1e-8, kind
            continue
        w = cagrad_inner_point(weights)
        f = cagrad_objective(Kn, b, phi, w)
        # KKT of the inner problem: a Frank-Wolfe gap of (numerically) zero.
        rho = (w @ Kn @ w).sqrt()
        grad = b + phi * (Kn @ w) / rho
        assert float(grad @ w - grad.min()) <= 1e-10, kind
        # Primal side (CAGrad's claim): d̃ = J̃ᵀc lies in the ball ‖d − g₀‖ ≤ φ and attains the
        # dual value, min_i g̃_iᵀd̃ = f(w*): no direction of the ball does better for the worst
        # task.
        u = weights - 1.0 / T
        assert abs(float((u @ Kn @ u).sqrt() - phi)) <= 1e-10, kind
        assert abs(float((Kn @ weights).min()) - f) <= 1e-10, kind
        if T <= 10:
            assert f <= slsqp_cagrad(Kn, b, phi) + 1e-9, kind


@pytest.mark.parametrize("T", [2, 3, 5, 10, 40])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_cagrad_matches_torchjd_and_tight_clarabel(T: int, backend: str, aggregation) -> None:
    pytest.importorskip("cvxpy")
    require_backend(backend, "cagrad")
    for kind in ("random", "conflicting", "positive", "duplicated"):
        _, J, K = seeded_jacobian(T, kind, 600 * T + len(kind))
        c = 0.5
        weights = mtl_fast.cagrad_weights(K, c=c, backend=backend)
        Kn, b, phi = cagrad_problem(K, c)
        f = cagrad_objective(Kn, b, phi, cagrad_inner_point(weights))
        w_tight = clarabel_cagrad(Kn, b, phi)
        assert f <= cagrad_objective(Kn, b, phi, w_tight) + 1e-10, kind
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = aggregation.CAGradWeighting(c=c)(K)
        # TorchJD's Clarabel stops at its default tolerances (1e-8): its objective is not
        # lower, and its direction agrees to what those tolerances leave.
        assert f <= cagrad_objective(Kn, b, phi, cagrad_inner_point(expected)) + 1e-9, kind
        assert direction_error(J, weights, expected) < 5e-3, kind
        if kind in ("random", "conflicting", "positive") and T <= 10:
            torch.testing.assert_close(weights, expected, rtol=2e-3, atol=2e-3, msg=kind)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cagrad_conventions(backend: str) -> None:
    require_backend(backend, "cagrad")
    cag = functools.partial(mtl_fast.cagrad_weights, backend=backend)
    gen = torch.Generator().manual_seed(0)
    J = jacobian(4, "random", gen)
    K = J @ J.T
    # c = 0: the mean gradient.
    torch.testing.assert_close(cag(K, c=0.0), torch.full((4,), 0.25, dtype=F64))
    # rescale as in the official code.
    base = cag(K, c=0.4)
    torch.testing.assert_close(cag(K, c=0.4, rescale=1), base / 1.16)
    torch.testing.assert_close(cag(K, c=0.4, rescale=2), base / 1.4)
    # TorchJD's zero rules: trace K < norm_eps, and a Pareto-stationary point (‖g_w‖ ≈ 0).
    assert cag(K * 1e-6, c=0.5).abs().max() == 0
    assert cag(K * 1e-6, c=0.5, norm_eps=0.0).abs().max() > 0
    opposite = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=F64)
    assert cag(opposite, c=0.5).abs().max() == 0
    assert cag(torch.zeros(3, 3), c=0.5).abs().max() == 0
    # T = 1: 1 + c.
    torch.testing.assert_close(
        cag(torch.tensor([[9.0]], dtype=F64), c=0.3), torch.tensor([1.3], dtype=F64)
    )


# ----------------------------------------------------------------------------------------------
# Nash-MTL
# ----------------------------------------------------------------------------------------------


def torchjd_nash(J: Tensor, max_norm: float, steps: int = 1) -> list[Tensor]:
    pytest.importorskip("cvxpy")
    nash = pytest.importorskip("torchjd.aggregation._nash_mtl")
    weighting = nash._NashMTLWeighting(
        n_tasks=J.shape[0], max_norm=max_norm, update_weights_every=1, optim_niter=20
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [weighting(J) for _ in range(steps)]


@pytest.mark.parametrize("T", [2, 3, 5, 10, 40])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_nash_mtl_matches_torchjd_where_it_solves(T: int, backend: str) -> None:
    require_backend(backend, "nash_mtl")
    for kind in ("random", "conflicting", "positive", "duplicated"):
        compared = 0
        for seed in range(4):
            _, J, K = seeded_jacobian(T, kind, 700 * T + 10 * seed + len(kind))
            alpha = mtl_fast.nash_mtl_solve(K, backend=backend)
            if kind in ("random", "positive", "duplicated") or T <= 3:
                assert nash_residual(K, alpha) <= 1e-8, "a solution exists for these Jacobians"
            (expected,) = torchjd_nash(J, max_norm=0.0)
            # TorchJD's sequence of convex problems stops at ~1e-6; where its ECOS solve fails
            # it returns its initial state (ones), which is not a solution.
            if nash_residual(K, expected) <= 1e-3:
                torch.testing.assert_close(alpha, expected, rtol=1e-4, atol=0, msg=kind)
                compared += 1
        if kind in ("random", "positive"):
            assert compared > 0


def test_nash_mtl_clipped_direction_matches_torchjd_aggregator(aggregation) -> None:
    pytest.importorskip("cvxpy")
    gen = torch.Generator().manual_seed(1)
    for T in (2, 5, 10):
        J = jacobian(T, "positive", gen)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = aggregation.NashMTL(n_tasks=T)(J)
        d = J.T @ mtl_fast.nash_mtl_weights(J @ J.T)
        assert float((d - expected).norm()) <= 1e-5
        assert abs(float(d.norm()) - 1.0) < 1e-12  # clipped to max_norm = 1 (αᵀKα = T > 1)


def test_nash_mtl_stateful_sequence() -> None:
    """Three steps with the state carried: TorchJD warm-starts its solver, we only fall back on
    the state; where both solve, they agree."""
    gen = torch.Generator().manual_seed(2)
    Js = [jacobian(5, "positive", gen) for _ in range(3)]
    pytest.importorskip("cvxpy")
    nash = pytest.importorskip("torchjd.aggregation._nash_mtl")
    weighting = nash._NashMTLWeighting(
        n_tasks=5, max_norm=0.0, update_weights_every=1, optim_niter=20
    )
    state = None
    for J in Js:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = weighting(J)
        state = mtl_fast.nash_mtl_solve(J @ J.T, prev_alpha=state)
        torch.testing.assert_close(state, expected, rtol=1e-4, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nash_mtl_equation_holds_and_no_solution_keeps_the_state(backend: str) -> None:
    """Theorem 5.1 of the paper: g_iᵀd = 1/α_i for d = Jᵀα; without a solution (0 in the hull
    of the gradients) the state is returned unchanged, as the references do on failure."""
    require_backend(backend, "nash_mtl")
    T = 4 if backend == "triton" else 10
    gen = torch.Generator().manual_seed(3)
    J = torch.stack([jacobian(T, k, gen) for k in ("random", "positive", "duplicated")])
    K = J @ J.mT
    alpha = mtl_fast.nash_mtl_solve(K, backend=backend)
    for k in range(3):
        assert nash_residual(K[k], alpha[k]) <= 1e-8
    J = torch.stack([jacobian(T, k, gen) for k in ("opposite", "zero-row", "zero", "rank-1")])
    J[3] *= torch.where(torch.arange(T) % 2 == 0, 1.0, -1.0).to(F64)[:, None]  # signs mixed
    K = J @ J.mT
    assert torch.equal(mtl_fast.nash_mtl_solve(K, backend=backend), torch.ones(4, T, dtype=F64))
    prev = torch.rand(T, generator=gen, dtype=F64) + 0.5
    assert torch.equal(
        mtl_fast.nash_mtl_solve(K, prev_alpha=prev, backend=backend), prev.expand(4, T)
    )
    # max_iter = 0 (the steps between weight updates) returns the state whatever K is.
    Jp = jacobian(T, "positive", gen)
    kept = mtl_fast.nash_mtl_solve(Jp @ Jp.T, prev_alpha=prev, max_iter=0, backend=backend)
    assert torch.equal(kept, prev)


def test_nash_mtl_closed_forms_and_clip() -> None:
    K = torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=F64)
    torch.testing.assert_close(mtl_fast.nash_mtl_solve(K), torch.tensor([1.0, 0.5], dtype=F64))
    # Two gradients at 60°, equal norms: α₁ = α₂ = 1/sqrt(‖g‖²(1 + cos)).
    K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=F64)
    torch.testing.assert_close(mtl_fast.nash_mtl_solve(K), torch.full((2,), 1 / 3**0.5, dtype=F64))
    alpha = torch.tensor([1.0, 1.0], dtype=F64)
    torch.testing.assert_close(mtl_fast.nash_mtl_clip(K, alpha, max_norm=1.0), alpha / 6**0.5)
    torch.testing.assert_close(mtl_fast.nash_mtl_clip(K, alpha, max_norm=10.0), alpha)
    torch.testing.assert_close(mtl_fast.nash_mtl_clip(K, alpha, max_norm=0.0), alpha)
    step = mtl_fast.nash_mtl_step(K, max_norm=1.0)
    torch.testing.assert_close(step.weights, mtl_fast.nash_mtl_clip(K, step.alpha, max_norm=1.0))


# ----------------------------------------------------------------------------------------------
# All methods: batching, scale, dtype, sync-free form, bad input
# ----------------------------------------------------------------------------------------------

Method = Callable[..., Tensor]
METHODS: dict[str, Method] = {
    "pcgrad": lambda K, **kw: mtl_fast.pcgrad_weights(
        K, generator=torch.Generator().manual_seed(0), **kw
    ),
    "imtlg": mtl_fast.imtlg_weights,
    "aligned_mtl": mtl_fast.aligned_mtl_weights,
    "aligned_mtl_median": functools.partial(mtl_fast.aligned_mtl_weights, scale_mode="median"),
    "config": mtl_fast.config_weights,
    "cagrad": functools.partial(mtl_fast.cagrad_weights, c=0.5),
    "nash_mtl": mtl_fast.nash_mtl_solve,
    "nash_mtl_weights": mtl_fast.nash_mtl_weights,
}
OP_OF = {name: name.removesuffix("_median").removesuffix("_weights") for name in METHODS}


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_batched_equals_looped(name: str, backend: str) -> None:
    require_backend(backend, OP_OF[name])
    method = functools.partial(METHODS[name], backend=backend)
    for T in (1, 2, 5, 16):
        gen = torch.Generator().manual_seed(T)
        _, Ks = kinds_batch(T, gen)
        batched = method(Ks.reshape(2, 4, T, T))
        assert batched.shape == (2, 4, T)
        order = mtl_fast.pcgrad_order((2, 4), T, generator=torch.Generator().manual_seed(0))
        order = order.reshape(8, T, T)
        for k, K in enumerate(Ks):
            if name == "pcgrad":
                single = mtl_fast.pcgrad_weights(K, order=order[k], backend=backend)
            else:
                single = method(K)
            torch.testing.assert_close(batched.reshape(8, T)[k], single, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_scale_behaviour(name: str, backend: str) -> None:
    """Weights are scale-free, except Nash-MTL's α ∝ 1/sqrt(scale) (and its clip) and
    CAGrad's zero below trace K < norm_eps (TorchJD's rule)."""
    require_backend(backend, OP_OF[name])
    method = functools.partial(METHODS[name], backend=backend)
    gen = torch.Generator().manual_seed(11)
    for scale in (1e-30, 1e-12, 1e-3, 1e6, 1e30):
        for T in (2, 5, 16):
            J = jacobian(T, "positive" if name.startswith("nash") else "random", gen)
            K = J @ J.T
            base, scaled = method(K), method(K * scale)
            assert torch.isfinite(scaled).all()
            if name == "nash_mtl":
                torch.testing.assert_close(scaled, base / scale**0.5, rtol=1e-8, atol=0)
            elif name == "nash_mtl_weights":
                d = (K * scale) @ scaled
                assert abs(float((scaled @ d).sqrt()) - 1.0) < 1e-8
            elif name == "cagrad" and float(K.trace()) * scale < 1e-4:
                assert scaled.abs().max() == 0
            else:
                torch.testing.assert_close(scaled, base, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_input_is_finite(name: str, backend: str) -> None:
    require_backend(backend, OP_OF[name])
    # Under the Triton interpreter a Newton step costs ~1 s per batch of these problems, and
    # most of them have no Nash solution (they spend the whole budget): a smaller one.
    budget = {"max_iter": 10} if backend == "triton" and name.startswith("nash") else {}
    method = functools.partial(METHODS[name], backend=backend, **budget)
    gen = torch.Generator().manual_seed(12)
    for T in (1, 3) if backend == "triton" else (1, 2, 3, 10):
        J = torch.stack([jacobian(T, kind, gen) for kind in KINDS])
        for scale in (1e-30, 1.0, 1e30):
            for dtype in (torch.float32, torch.float64):
                Ks = (J @ J.mT * scale).to(dtype)
                c = method(Ks)
                assert torch.isfinite(c).all(), (name, T, scale, dtype)
                assert c.dtype == dtype


@pytest.mark.parametrize("name", list(METHODS))
def test_dtypes_and_empty_batch(name: str) -> None:
    gen = torch.Generator().manual_seed(13)
    J = jacobian(4, "random", gen)
    K = J @ J.T
    ref = METHODS[name](K)
    for dtype, tol in ((torch.float16, 5e-2), (torch.bfloat16, 2e-1), (torch.float32, 1e-4)):
        c = METHODS[name](K.to(dtype))
        assert c.dtype == torch.float32
        torch.testing.assert_close(c.double(), ref, rtol=tol, atol=tol)
    empty = METHODS[name](torch.zeros(0, 4, 4))
    assert empty.shape == (0, 4)


@pytest.mark.parametrize(
    "solve",
    [
        functools.partial(mtl_fast.cagrad_weights, c=0.5, max_iter=30),
        functools.partial(mtl_fast.nash_mtl_solve, max_iter=30),
        functools.partial(mtl_fast.nash_mtl_weights, max_iter=30),
    ],
)
def test_sync_free_form_equals_early_exit(solve: Callable[..., Tensor]) -> None:
    gen = torch.Generator().manual_seed(14)
    kinds = ["random", "conflicting", "positive", "zero", "opposite"]
    _, Ks = kinds_batch(8, gen, kinds)
    fixed = solve(Ks, sync_free=True, backend="reference")
    assert torch.equal(fixed, solve(Ks, sync_free=False, backend="reference"))


@pytest.mark.slow
@pytest.mark.parametrize(
    "solve",
    [
        functools.partial(mtl_fast.cagrad_weights, c=0.5, max_iter=3, sync_free=True),
        functools.partial(mtl_fast.nash_mtl_weights, max_iter=3, sync_free=True),
        functools.partial(
            mtl_fast.pcgrad_weights, order=torch.stack([torch.randperm(5) for _ in range(5)])
        ),
    ],
)
def test_sync_free_form_has_no_host_sync(solve: Callable[..., Tensor]) -> None:
    """The sync-free reference forms compile as ONE graph: a host read-back (.item(), bool(),
    data-dependent Python control flow) would be a graph break and fail fullgraph=True."""
    gen = torch.Generator().manual_seed(15)
    _, Ks = kinds_batch(5, gen, ["random", "conflicting"])
    fn = functools.partial(solve, check_finite=False, backend="reference")
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(Ks), fn(Ks))


@pytest.mark.slow
def test_early_exit_form_is_not_sync_free() -> None:
    """Guard for the check above: the CPU form does read back a value, and dynamo notices."""
    gen = torch.Generator().manual_seed(16)
    J = jacobian(5, "random", gen)
    fn = functools.partial(
        mtl_fast.cagrad_weights, c=0.5, sync_free=False, check_finite=False, backend="reference"
    )
    torch._dynamo.reset()
    with pytest.raises(Exception):  # noqa: B017 - dynamo's error class varies across versions
        torch.compile(fn, fullgraph=True, backend="eager")(J @ J.T)


@pytest.mark.slow
@pytest.mark.parametrize("op", AGGREGATOR_OPS)
def test_compiled_library_is_one_node_under_torch_compile(op: str) -> None:
    """The CPU backend's custom ops trace (fake implementations) with fullgraph=True."""
    require_backend("cpu", op)
    gen = torch.Generator().manual_seed(17)
    _, Ks = kinds_batch(4, gen, ["random", "conflicting"])
    order = mtl_fast.pcgrad_order((2,), 4, generator=gen)
    fn = functools.partial(_call, op, backend="cpu", order=order)
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(Ks), fn(Ks))


@pytest.mark.parametrize("name", list(METHODS))
def test_bad_gram_raises(name: str) -> None:
    method = METHODS[name]
    with pytest.raises(TypeError, match=r"K must be a torch\.Tensor"):
        method([[1.0]])
    with pytest.raises(TypeError, match="K must have dtype"):
        method(torch.eye(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"K must have shape \(\.\.\., T, T\)"):
        method(torch.ones(3))
    with pytest.raises(ValueError, match=r"K must have shape \(\.\.\., T, T\)"):
        method(torch.ones(2, 3))
    with pytest.raises(ValueError, match="at least one task"):
        method(torch.ones(0, 0))
    with pytest.raises(mtl_fast.NonFiniteError, match=r"task\(s\) \[1\]"):
        method(torch.tensor([[1.0, 0.0], [0.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"negative diagonal entry for task\(s\) \[0\]"):
        method(torch.tensor([[-1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="backend must be"):
        method(torch.eye(2), backend="nope")


def test_bad_hyperparameters_raise_and_touch_nothing() -> None:
    K = torch.eye(3)
    with pytest.raises(ValueError, match="c must be"):
        mtl_fast.cagrad_weights(K, c=-1.0)
    with pytest.raises(ValueError, match="c must be"):
        mtl_fast.cagrad_weights(K, c=float("inf"))
    with pytest.raises(ValueError, match="norm_eps"):
        mtl_fast.cagrad_weights(K, c=0.5, norm_eps=-1e-4)
    with pytest.raises(ValueError, match="rescale"):
        mtl_fast.cagrad_weights(K, c=0.5, rescale=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_iter"):
        mtl_fast.cagrad_weights(K, c=0.5, max_iter=-1)
    with pytest.raises(ValueError, match="max_iter"):
        mtl_fast.nash_mtl_solve(K, max_iter=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tol"):
        mtl_fast.nash_mtl_solve(K, tol=float("nan"))
    state = torch.tensor([1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="prev_alpha must be positive"):
        mtl_fast.nash_mtl_step(K, prev_alpha=state)
    assert state.tolist() == [1.0, 0.0, 1.0]  # a refused call leaves the state as it was
    with pytest.raises(ValueError, match=r"prev_alpha must have shape"):
        mtl_fast.nash_mtl_solve(K, prev_alpha=torch.ones(4))
    with pytest.raises(ValueError, match="prev_alpha holds NaN"):
        mtl_fast.nash_mtl_solve(K, prev_alpha=torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="max_norm"):
        mtl_fast.nash_mtl_weights(K, max_norm=-1.0)
    with pytest.raises(ValueError, match="scale_mode"):
        mtl_fast.aligned_mtl_weights(K, scale_mode="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pref must have shape"):
        mtl_fast.aligned_mtl_weights(K, pref=torch.ones(2))
    with pytest.raises(TypeError, match=r"pref must be a torch\.Tensor"):
        mtl_fast.config_weights(K, pref=[1.0, 1.0, 1.0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not broadcast"):
        mtl_fast.config_weights(K.expand(2, 3, 3), pref=torch.ones(3, 3))
    with pytest.raises(ValueError, match="pref is on meta"):
        mtl_fast.config_weights(K, pref=torch.ones(3, device="meta"))
    with pytest.raises(ValueError, match="rtol"):
        mtl_fast.imtlg_weights(K, rtol=-1.0)
    with pytest.raises(ValueError, match="permutation"):
        mtl_fast.pcgrad_weights(K, order=torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="not both"):
        mtl_fast.pcgrad_weights(
            K, order=torch.zeros(3, 3, dtype=torch.int64), generator=torch.Generator()
        )
    with pytest.raises(TypeError, match="integer"):
        mtl_fast.pcgrad_weights(K, order=torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"order must have shape"):
        mtl_fast.pcgrad_weights(K, order=torch.zeros(3, 2, dtype=torch.int64))


BACKEND_DEFAULTS = {"backend": None, "check_finite": None, "sync_free": None}
NASH_SOLVE_DEFAULTS = {**BACKEND_DEFAULTS, "prev_alpha": None, "max_iter": 50, "tol": 1e-10}
SPELLED = {
    "cagrad_weights": (
        {"c": inspect.Parameter.empty, "norm_eps": 1e-4, "rescale": 0, "max_iter": 100}
        | {"tol": 1e-12, **BACKEND_DEFAULTS}
    ),
    "nash_mtl_step": {**NASH_SOLVE_DEFAULTS, "max_norm": 1.0},
    "nash_mtl_weights": {**NASH_SOLVE_DEFAULTS, "max_norm": 1.0},
    "nash_mtl_solve": NASH_SOLVE_DEFAULTS,
}


@pytest.mark.parametrize("name", list(SPELLED))
def test_keyword_groups_are_spelled_out_and_misspellings_refused(name: str) -> None:
    """help() and inspect show every keyword of the op's group with its default, keyword-only;
    a misspelled keyword is a TypeError naming it, before anything is computed."""
    op = getattr(mtl_fast, name)
    params = inspect.signature(op).parameters
    assert next(iter(params)) == "K" and params["K"].kind is inspect.Parameter.POSITIONAL_ONLY
    assert {n: p.default for n, p in params.items() if n != "K"} == SPELLED[name]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for n, p in params.items() if n != "K")
    extra = {"c": 0.5} if name == "cagrad_weights" else {}
    with pytest.raises(TypeError, match="max_iters"):
        op(torch.eye(2), max_iters=3, **extra)
    with pytest.raises(TypeError, match="max_iters"):  # named before K is looked at
        op("not a tensor", max_iters=3, **extra)
    if name == "nash_mtl_solve":  # it does not clip: max_norm is not one of its keywords
        with pytest.raises(TypeError, match="max_norm"):
            op(torch.eye(2), max_norm=1.0)


@pytest.mark.parametrize("name", [*SPELLED, "upgrad_weights", "dualproj_weights"])
def test_sync_free_must_be_a_bool_or_none(name: str) -> None:
    """Every op whose options build on the shared backend group refuses a sync_free that is not
    True, False or None, naming it (a string was silently read as True before)."""
    op = getattr(mtl_fast, name)
    extra = {"c": 0.5} if name == "cagrad_weights" else {}
    with pytest.raises(TypeError, match=r"sync_free must be True, False or None, got str 'no'"):
        op(torch.eye(2), sync_free="no", **extra)


def test_explicit_backend_without_the_op_says_why() -> None:
    cuda = _load("cuda")
    if isinstance(cuda, str):
        with pytest.raises(mtl_fast.BackendUnavailableError, match="backend='cuda'"):
            mtl_fast.imtlg_weights(torch.eye(2), backend="cuda")


@pytest.mark.parametrize("op", AGGREGATOR_OPS)
def test_every_backend_follows_the_contract(op: str) -> None:
    """Positional-only tensors and hyperparameter dataclass, as the op's Protocol says."""
    from mtl_fast._core.contracts import CONTRACTS, OP_FILES

    want = inspect.signature(CONTRACTS[op].__call__)
    want_params = [(p.name, p.kind) for p in want.parameters.values() if p.name != "self"]
    for backend in BACKENDS:
        loaded = _load(backend)
        if isinstance(loaded, str) or op not in loaded.OPS:
            continue
        fn = getattr(loaded, op)
        assert fn.__module__.endswith(f".{OP_FILES[op]}"), (backend, fn.__module__)
        got = [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]
        assert got == want_params, (backend, op)
