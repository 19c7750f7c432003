"""min_norm on every backend: the float64 optimum and a QP oracle, KKT and the stopping rule,
invariances (scale, permutation, batching), degenerate and closed-form Grams, the iteration
budget. Backend-specific at the end: the emulated kernel follows the reference step for step,
the reference's sync-free form, Triton's task limit.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import mtl_fast
from mtl_fast._core.precision import ATOL, MIN_NORM_TOL
from mtl_fast.kernels.reference.min_norm import min_norm as ref_min_norm
from mtl_fast.tools.verify import gram_samples
from tests.backends import for_backends
from tests.helpers import (
    BF16,
    FP16,
    FP32,
    FP64,
    assert_kkt,
    assert_on_simplex,
    conflicting_gram,
    duplicated_gram,
    objective,
    psd_with_rank,
)


def solve(backend, K: torch.Tensor, *, max_iter: int, tol: float) -> torch.Tensor:
    """The backend's op on (B, T, T) K (moved to its device), as the public op would call it."""
    fn = backend.op("min_norm")
    return fn(backend.to(K), max_iter=max_iter, tol=tol, sync_free=backend.sync_free).cpu()


def scale_of(K: torch.Tensor) -> torch.Tensor:
    return K.double().diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)


def excess(K: torch.Tensor, w: torch.Tensor, w_star: torch.Tensor) -> torch.Tensor:
    """(f(w) − f(w*)) / max K_ii per problem, in fp64."""
    return (objective(K, w) - objective(K, w_star)) / scale_of(K)


def kinds(T: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Named (T, T) fp64 Grams: generic, rank 1, conflicting, duplicated, scaled, zero.

    (Low rank at scale 1, where an fp32 Gram is slightly indefinite and a gap of 1e-8 may take
    the whole budget, is the fp64 oracle test's.)"""
    out = {
        "full-rank": psd_with_rank(T, T, gen),
        "rank-1": psd_with_rank(T, 1, gen),
        "conflicting": conflicting_gram(T, gen),
        "duplicated": duplicated_gram(T, gen),
        "full-rank ×1e12": psd_with_rank(T, T, gen) * 1e12,
        "zero": torch.zeros(T, T, dtype=FP64),
    }
    out.update({f"verify {k}": v for k, v in gram_samples(T, gen).items()})
    if T <= 8:
        # Low rank with 0 in the hull: at T = 40 the reference, too, needs > 1000 iterations
        # for a gap of 1e-8, which the interpreter would take minutes to replay.
        out["low-rank ×1e-12"] = psd_with_rank(T, max(1, T // 3), gen) * 1e-12
    return out


# The interpreter pays per operation: at T = 40 and 64 it solves the first kinds only (the
# whole set runs on the reference and on a GPU).
INTERPRETED_KINDS = {40: ["full-rank", "rank-1", "conflicting", "duplicated"], 64: ["full-rank"]}
INTERPRETED_KINDS[64].append("conflicting")

OPTIMUM_T = [2, 3, 5, 8, 16, 17, 31, 32, 33, 40, 63, 64, 65, 100, 130]
# How far the weights may be from summing to 1 (fp32 weights are rounded fp64 ones).
SIMPLEX_ATOL = {FP32: 1e-6, FP64: ATOL[FP64]}


@for_backends(
    "min_norm",
    "dtype, T",
    [(d, T) for d in (FP32, FP64) for T in OPTIMUM_T],
    interpreter=[(d, T) for d in (FP32, FP64) for T in (2, 3, 5, 8, 17, 40, 64)],
    emulator=[],  # its step-for-step test below checks the optimum too
)
def test_min_norm_reaches_the_optimum(backend, dtype, T) -> None:
    names, K, w_star = fp64_optima(T)
    if backend.tier == "interpreter" and T in INTERPRETED_KINDS:
        keep = [names.index(k) for k in INTERPRETED_KINDS[T]]
        names, K, w_star = INTERPRETED_KINDS[T], K[keep], w_star[keep]
    w = solve(backend, K.to(dtype), max_iter=2000, tol=1e-8)
    assert w.dtype == dtype and w.shape == (len(names), T)
    assert_on_simplex(w, atol=SIMPLEX_ATOL[dtype])
    gaps = excess(K, w, w_star)
    assert gaps.max().item() <= MIN_NORM_TOL, dict(zip(names, gaps.tolist()))


@functools.cache
def fp64_optima(T: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The Grams of :func:`kinds` and the reference's fp64 optimum of each (tol 1e-12; computed
    once for both dtypes and every backend, one problem at a time: each stops as soon as it has
    converged, where a batch runs until the last one has)."""
    named = kinds(T, torch.Generator().manual_seed(T))
    K = torch.stack(list(named.values()))
    w_star = [ref_min_norm(k[None], max_iter=2000, tol=1e-12, sync_free=False) for k in K]
    return list(named), K, torch.cat(w_star)


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


@functools.cache
def oracle_problems(T: int) -> tuple[list[str], torch.Tensor, list[float]]:
    """The Grams of the oracle test and their SLSQP optima (computed once for every backend)."""
    gen = torch.Generator().manual_seed(T)
    named = {
        "full-rank": psd_with_rank(T, T, gen),
        "rank-1": psd_with_rank(T, 1, gen),
        "conflicting": conflicting_gram(T, gen),
        "duplicated": duplicated_gram(T, gen),
        "low-rank": psd_with_rank(T, max(1, T // 3), gen),
        "zero": torch.zeros(T, T, dtype=FP64),
    }
    K = torch.stack(list(named.values()))
    return list(named), K, [qp_oracle(k) for k in K]


@for_backends(
    "min_norm",
    "T",
    [1, 2, 3, 5, 8, 16, 32, 64],
    interpreter=[1, 2, 3, 5, 8],  # larger T: the reference and a GPU
    emulator=[1, 2, 3, 5],
)
def test_min_norm_matches_qp_oracle_and_kkt(backend, T) -> None:
    """Through the public op (T = 1 is its closed form), fp64: the objective is at most the
    SLSQP oracle's (+ 1e-6 of max K_ii) and the KKT conditions hold."""
    names, K, oracle = oracle_problems(T)
    W = mtl_fast.min_norm(
        backend.to(K),
        tol=1e-10,
        max_iter=2000,
        sync_free=backend.sync_free,
        backend=backend.dispatch,
    ).cpu()
    for name, k, w, f_oracle in zip(names, K, W, oracle):
        assert_on_simplex(w, atol=SIMPLEX_ATOL[FP64])
        scale = max(k.diagonal().max().item(), 1e-300)
        f = objective(k, w).item()
        assert f <= f_oracle + 1e-6 * scale, f"{name}: {f} vs oracle {f_oracle}"
        assert_kkt(k, w, tol=1e-6)


@for_backends("min_norm", "B", [16], interpreter=[4], emulator=[4])
def test_min_norm_kkt_and_stopping_rule(backend, B) -> None:
    gen = torch.Generator().manual_seed(5)
    J = torch.randn(16, 12, 40, generator=gen, dtype=FP64)[:B]
    K = J @ J.transpose(-1, -2)
    tol = 1e-9
    w = solve(backend, K, max_iter=5000, tol=tol)
    g = torch.einsum("bij,bj->bi", K, w)
    f = (w * g).sum(-1)
    scale = scale_of(K)
    gap = 2 * (f - g.min(-1).values) / scale
    assert gap.max().item() <= tol * 1.01  # a solve stops only once the gap is below tol
    # KKT: Σ_i w_i ((Kw)_i − min_j (Kw)_j) = f − min_j (Kw)_j = gap / 2, so every task with
    # w_i ≥ 1e-3 has (Kw)_i within gap / 2e-3 ≤ 5e-7 (relative) of the minimum.
    support = w >= 1e-3
    spread = torch.where(support, g - g.min(-1, keepdim=True).values, 0.0) / scale[:, None]
    assert spread.max().item() <= 1e-6


# ------------------------------------------------------------------------------ invariances

SCALES = [0.0, 1e-30, 1e-12, 1e-10, 1e-6, 1.0, 1e6, 1e12, 1e15, 1e30]
SCALES_SLOW = [0.0, 1e-30, 1.0, 1e30]


@for_backends(
    "min_norm",
    "dtype, scale",
    [(d, s) for d in (FP32, FP64) for s in SCALES],
    interpreter=[(d, s) for d in (FP32, FP64) for s in SCALES_SLOW],
    emulator=[(d, s) for d in (FP32, FP64) for s in SCALES_SLOW],
)
def test_min_norm_is_scale_invariant(backend, dtype, scale) -> None:
    """K is normalised by max K_ii first: the weights do not depend on its scale, from 1e-30 to
    1e30, and K = 0 still gives a simplex point. (Slow tiers: four scales, T ≤ 5.)"""
    gen = torch.Generator().manual_seed(7)
    problems = [psd_with_rank(T, T, gen)[None] for T in (2, 5, 16)]  # unique minimisers
    if backend.tier != "full":
        problems = problems[:2]
    J = torch.randn(4, 6, 30, generator=torch.Generator().manual_seed(1), dtype=FP64)
    problems.append(J @ J.transpose(-1, -2))  # a batch of four
    for K in problems:
        w1 = solve(backend, K.to(dtype), max_iter=1000, tol=1e-10)
        ws = solve(backend, (K * scale).to(dtype), max_iter=1000, tol=1e-10)
        assert_on_simplex(ws, atol=1e-5)
        if scale == 0.0:
            continue  # K = 0: every simplex point is optimal
        torch.testing.assert_close(ws, w1, atol=1e-9 if dtype == FP64 else 2e-3, rtol=0)
        if dtype == FP64:  # the same optimum: objectives within 1e-9 of max K_ii
            f1, fs = objective(K, w1) / scale_of(K), objective(K, ws) / scale_of(K)
            assert (fs - f1).abs().max().item() <= 1e-9


@for_backends("min_norm", "dtype", [FP32, FP64])
def test_min_norm_power_of_two_scaling_is_bitwise(backend, dtype) -> None:
    """Scaling by a power of two leaves the normalised K the same bits: the same weights."""
    K = backend.to(conflicting_gram(8, torch.Generator().manual_seed(2)).to(dtype))
    w = mtl_fast.min_norm(K, backend=backend.dispatch)
    for s in (2.0**-80, 2.0**70):
        assert torch.equal(mtl_fast.min_norm(K * s, backend=backend.dispatch), w)


@for_backends("min_norm", "T", [3, 8, 32], interpreter=[3, 8], emulator=[3, 8])
def test_min_norm_permutation_equivariance(backend, T) -> None:
    gen = torch.Generator().manual_seed(T)
    K = psd_with_rank(T, T, gen)
    perm = torch.randperm(T, generator=gen)
    w = mtl_fast.min_norm(backend.to(K), tol=1e-12, backend=backend.dispatch).cpu()
    K_perm = backend.to(K[perm][:, perm])
    w_perm = mtl_fast.min_norm(K_perm, tol=1e-12, backend=backend.dispatch).cpu()
    torch.testing.assert_close(w_perm, w[perm], atol=1e-8, rtol=0)


@for_backends("min_norm", "T", [2, 5, 16, 64], interpreter=[2, 5], emulator=[2, 5])
def test_min_norm_solves_the_whole_batch_at_once(backend, T) -> None:
    """(2, 3, T, T): each problem's objective is the one it has when solved alone."""
    gen = torch.Generator().manual_seed(100 + T)
    named = kinds(T, gen)
    low_rank = psd_with_rank(T, max(1, T // 3), gen)
    Ks = torch.stack([named[k] for k in ("full-rank", "rank-1", "conflicting", "duplicated")])
    Ks = torch.cat([Ks, torch.stack([low_rank, named["zero"]])])
    batched = mtl_fast.min_norm(
        backend.to(Ks.reshape(2, 3, T, T)), tol=1e-10, backend=backend.dispatch
    )
    assert batched.shape == (2, 3, T)
    for K, w in zip(Ks, batched.reshape(-1, T)):
        single = mtl_fast.min_norm(backend.to(K), tol=1e-10, backend=backend.dispatch)
        scale = max(K.diagonal().max().item(), 1e-300)
        assert abs(objective(K, w).item() - objective(K, single).item()) <= 1e-9 * scale


@for_backends("min_norm")
def test_min_norm_agrees_with_reference_weights(backend) -> None:
    gen = torch.Generator().manual_seed(0)
    K = torch.stack([psd_with_rank(6, 6, gen) for _ in range(5)])  # a unique optimum each
    w_ref = ref_min_norm(K, max_iter=500, tol=1e-12, sync_free=False)
    w = mtl_fast.min_norm(backend.to(K), max_iter=500, tol=1e-12, backend=backend.dispatch)
    torch.testing.assert_close(w.cpu(), w_ref, atol=1e-7, rtol=0)


# -------------------------------------------------------------------- degenerate, budgets


@for_backends("min_norm")
def test_min_norm_closed_forms(backend) -> None:
    def run(K, **kw):
        return mtl_fast.min_norm(backend.to(K), backend=backend.dispatch, **kw).cpu()

    # T = 1 → [1]; two opposite gradients of equal norm → [½, ½]; a zero gradient wins alone.
    assert run(torch.tensor([[3.0]])).tolist() == [1.0]
    assert torch.equal(run(torch.eye(1)), torch.ones(1))
    opposite = torch.tensor([[4.0, -4.0], [-4.0, 4.0]], dtype=FP64)
    torch.testing.assert_close(
        run(opposite), torch.tensor([0.5, 0.5], dtype=FP64), atol=1e-9, rtol=0
    )
    with_zero = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=FP64)
    assert run(with_zero).tolist() == [0.0, 1.0]
    # Two gradients at an acute angle: the exact vertex, not γ clamped to [0.001, 0.999] as
    # in the published 2-task closed form.
    # g2 is shorter and ⟨g1, g2⟩ ≥ |g2|²: the optimum is the vertex e_2 itself.
    K = torch.tensor([[2.0, 1.998], [1.998, 1.996]], dtype=FP64)
    assert run(K, tol=1e-14).tolist() == [0.0, 1.0]
    # No iteration: the start vertex, the task with the smallest K_ii.
    for dtype in (FP32, FP64):
        start = torch.diag(torch.tensor([3.0, 1.0, 2.0], dtype=dtype)).unsqueeze(0)
        assert torch.equal(run(start, max_iter=0), torch.tensor([[0.0, 1.0, 0.0]], dtype=dtype))


@for_backends("min_norm")
def test_min_norm_degenerate_grams(backend) -> None:
    u = torch.randn(10, generator=torch.Generator().manual_seed(0), dtype=FP64)
    fp64_cases = {
        "zero": torch.zeros(5, 5, dtype=FP64),
        "opposite": torch.stack([u, -u]) @ torch.stack([u, -u]).T,
        "rank-1 same sign": torch.stack([u, 2 * u, 3 * u]) @ torch.stack([u, 2 * u, 3 * u]).T,
        "duplicates": torch.stack([u, u, u, u]) @ torch.stack([u, u, u, u]).T,
    }
    for name, K in fp64_cases.items():
        w = mtl_fast.min_norm(backend.to(K), backend=backend.dispatch).cpu()
        assert torch.isfinite(w).all(), name
        assert (w >= 0).all() and abs(w.sum().item() - 1) < 1e-9, name
        w_ref = ref_min_norm(K.unsqueeze(0), max_iter=256, tol=1e-6, sync_free=False)[0]
        f, f_ref = w @ K @ w, w_ref @ K @ w_ref
        assert f.item() <= f_ref.item() + 1e-6 * max(K.diagonal().max().item(), 1e-300), name
    opposite = mtl_fast.min_norm(backend.to(fp64_cases["opposite"]), backend=backend.dispatch)
    torch.testing.assert_close(
        opposite.cpu(), torch.tensor([0.5, 0.5], dtype=FP64), atol=1e-9, rtol=0
    )
    for K in (torch.zeros(4, 4), torch.ones(4, 4), torch.tensor([[1.0, -1], [-1, 1]])):
        assert_on_simplex(mtl_fast.min_norm(backend.to(K), backend=backend.dispatch))


@for_backends("min_norm", "dtype, entry", [(d, e) for d in (FP32, FP64) for e in (1e-30, 1e30)])
def test_min_norm_extreme_entries_give_valid_weights(backend, dtype, entry) -> None:
    gen = torch.Generator().manual_seed(1)
    for T in (2, 3, 17):
        K = (psd_with_rank(T, T, gen) / T * entry).to(dtype)
        assert_on_simplex(mtl_fast.min_norm(backend.to(K), backend=backend.dispatch), atol=1e-5)


@for_backends("min_norm")
def test_min_norm_of_half_precision_input_is_fp32(backend) -> None:
    K = psd_with_rank(4, 4, torch.Generator().manual_seed(5))
    for dtype in (FP16, BF16):
        w = mtl_fast.min_norm(backend.to(K.to(dtype)), backend=backend.dispatch)
        assert w.dtype == FP32
        assert_on_simplex(w)


def budget_batch(T: int, gen: torch.Generator) -> torch.Tensor:
    named = kinds(T, gen)
    keep = ["full-rank", "rank-1", "conflicting", "duplicated", "full-rank ×1e12", "zero"]
    return torch.stack([named[k] for k in [*keep, "low-rank ×1e-12"]])


@for_backends("min_norm")
def test_min_norm_iteration_budget_is_the_references(backend) -> None:
    """Every backend runs the reference's algorithm: after 0, 1 and 2 iterations its weights
    are the reference's (a run of the whole budget, sync_free=True)."""
    K = budget_batch(5, torch.Generator().manual_seed(1))
    for budget in (0, 1, 2):
        w = mtl_fast.min_norm(backend.to(K), max_iter=budget, backend=backend.dispatch)
        w_ref = ref_min_norm(K, max_iter=budget, tol=1e-6, sync_free=True)
        torch.testing.assert_close(w.cpu(), w_ref, atol=1e-9, rtol=0, msg=f"budget {budget}")


@for_backends("min_norm")
def test_min_norm_sync_free_form_agrees_with_early_exit(backend) -> None:
    """The whole budget under masks changes the weights by at most rounding (the reference
    renormalises once more per iteration); the kernels ignore the flag: the same bits."""
    gen = torch.Generator().manual_seed(3)
    Ks = backend.to(
        torch.stack(
            [psd_with_rank(8, 8, gen), conflicting_gram(8, gen), torch.zeros(8, 8, dtype=FP64)]
        )
    )
    early = mtl_fast.min_norm(Ks, tol=1e-10, sync_free=False, backend=backend.dispatch)
    fixed = mtl_fast.min_norm(Ks, tol=1e-10, sync_free=True, max_iter=300, backend=backend.dispatch)
    torch.testing.assert_close(fixed, early, atol=1e-10, rtol=0)
    if backend.is_kernel:
        K = backend.to(budget_batch(5, torch.Generator().manual_seed(3)))
        a = mtl_fast.min_norm(K, sync_free=True, backend=backend.dispatch)
        assert torch.equal(a, mtl_fast.min_norm(K, sync_free=False, backend=backend.dispatch))


@for_backends("min_norm", "B, T", [(64, 40)], interpreter=[(4, 12)], emulator=[(4, 12)])
def test_min_norm_is_reproducible(backend, B, T) -> None:
    J = torch.randn(B, T, 2 * T, generator=torch.Generator().manual_seed(B))
    K = backend.to(J @ J.transpose(-1, -2))
    fn = backend.op("min_norm")
    a = fn(K, max_iter=500, tol=1e-7, sync_free=backend.sync_free)
    assert torch.equal(a, fn(K, max_iter=500, tol=1e-7, sync_free=backend.sync_free))


# ------------------------------------------------------------- bad input (before dispatch)


def test_min_norm_rejects_bad_shapes_and_options() -> None:
    with pytest.raises(ValueError, match=r"K must have shape \(\.\.\., T, T\), got \(2, 3\)"):
        mtl_fast.min_norm(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"K must have shape \(\.\.\., T, T\), got \(4,\)"):
        mtl_fast.min_norm(torch.zeros(4))
    with pytest.raises(TypeError, match="K must have dtype"):
        mtl_fast.min_norm(torch.zeros(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="max_iter must be an int"):
        mtl_fast.min_norm(torch.eye(2), max_iter=-1)
    with pytest.raises(ValueError, match="tol must be a finite number"):
        mtl_fast.min_norm(torch.eye(2), tol=float("nan"))


# ------------------------------------------------------------------------ backend-specific

EMULATED_CASES = [(FP64, 1), (FP64, 2), (FP64, 3), (FP32, 5), (FP64, 8), (FP32, 17)]
EMULATED_CASES += [(FP64, 33), (FP64, 40)]


@for_backends("min_norm", "dtype, T", EMULATED_CASES, only=["cuda-emulated"])
def test_emulated_min_norm_follows_the_reference(backend, dtype, T) -> None:
    """cuda-emulated only: on generic, near-rank-1 conflicting, zero and duplicated Grams the
    kernel's weights are the reference's (same algorithm, same stopping rule; T = 1 included)
    and reach the fp64 optimum."""
    samples = gram_samples(T, torch.Generator().manual_seed(T))
    Kd = torch.stack(list(samples.values()))
    K = Kd.to(dtype)
    w = backend.op("min_norm")(K, max_iter=1000, tol=1e-7, sync_free=True)
    assert w.dtype == dtype and torch.isfinite(w).all()
    assert_on_simplex(w, atol=SIMPLEX_ATOL[dtype])
    w_ref = ref_min_norm(K, max_iter=1000, tol=1e-7, sync_free=False)
    diff = (w.double() - w_ref.double()).abs()
    assert diff.max().item() <= 1e-6, dict(zip(samples, diff.amax(-1).tolist()))
    w_star = ref_min_norm(Kd, max_iter=1000, tol=1e-12, sync_free=False)
    assert excess(Kd, w, w_star).max().item() <= MIN_NORM_TOL


def test_reference_sync_free_form_has_no_host_sync() -> None:
    """reference only. The form a CUDA device runs compiles as ONE graph: any host read-back
    (.item(), bool(), data-dependent Python control flow) would be a graph break and fail
    fullgraph=True."""
    gen = torch.Generator().manual_seed(4)
    K = torch.stack([psd_with_rank(5, 5, gen), conflicting_gram(5, gen)])
    solve_ = functools.partial(ref_min_norm, max_iter=4, tol=1e-8, sync_free=True)
    torch._dynamo.reset()
    compiled = torch.compile(solve_, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(K), solve_(K))


def test_reference_early_exit_form_is_not_sync_free() -> None:
    """reference only. Guard for the check above: the CPU form does read back a value, and
    dynamo notices."""
    gen = torch.Generator().manual_seed(4)
    K = psd_with_rank(5, 5, gen)[None]
    solve_ = functools.partial(ref_min_norm, max_iter=4, tol=1e-8, sync_free=False)
    torch._dynamo.reset()
    with pytest.raises(Exception):  # noqa: B017 - dynamo's error class varies across versions
        torch.compile(solve_, fullgraph=True, backend="eager")(K)


@for_backends("min_norm", only=["triton"])
def test_triton_min_norm_above_max_tasks_says_so(backend) -> None:
    """triton only (T ≤ 64; the CUDA limit: tests/test_cuda_backend.py). The dispatcher refuses
    from the backend's TASK_LIMITS before any kernel is launched; "auto" passes over it."""
    limit = backend.module.MAX_TASKS
    K = backend.to(torch.eye(limit + 1))
    with pytest.raises(mtl_fast.BackendUnavailableError, match=f"supports T ≤ {limit} tasks"):
        mtl_fast.min_norm(K, backend="triton")
    w = mtl_fast.min_norm(K)
    torch.testing.assert_close(w.cpu(), torch.full((limit + 1,), 1 / (limit + 1)))
