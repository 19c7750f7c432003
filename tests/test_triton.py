"""Triton backend against the reference: every kernel, odd shapes, low precision, degenerate Grams.

Without a GPU the kernels run under Triton's interpreter (``conftest`` sets TRITON_INTERPRET=1
before anything imports Triton). With ``MTL_FAST_TEST_DEVICE=cuda`` the same tests run compiled
on the GPU, and so do the GPU-only ones at the end (bitwise determinism, T·P > 2³¹, CUDA graph
capture and replay of the whole step).

Tolerances follow ``mtl-fast verify``: against the fp64 truth, a kernel's relative error may be
at most twice the reference's own error at the same dtype plus ``ATOL``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

import mtl_fast
from mtl_fast._core import dispatch as _dispatch
from mtl_fast._core.precision import ATOL
from mtl_fast.kernels import reference as ref
from tests.helpers import (
    assert_on_simplex,
    conflicting_gram,
    duplicated_gram,
    objective,
    psd_with_rank,
)

DEVICE = torch.device(os.environ.get("MTL_FAST_TEST_DEVICE", "cpu"))


def _why_not() -> str | None:
    status = mtl_fast.backends()["triton"]
    if not status.available:
        return status.reason
    module = _dispatch._load("triton")
    assert not isinstance(module, str)
    return module.device_reason(DEVICE)


REASON = _why_not()
pytestmark = pytest.mark.skipif(
    REASON is not None, reason=f"the Triton backend cannot run on {DEVICE}: {REASON}"
)
on_gpu = pytest.mark.skipif(
    DEVICE.type != "cuda", reason="needs MTL_FAST_TEST_DEVICE=cuda and a CUDA device"
)

TASKS = [1, 2, 3, 5, 8, 17, 40, 64]
COLUMNS = [1, 7, 1000, 65537]


def rel(x: torch.Tensor, truth: torch.Tensor) -> float:
    """Max error relative to the truth's largest magnitude (absolute when the truth is 0)."""
    x, truth = x.detach().cpu().double(), truth.detach().cpu().double()
    scale = truth.abs().max().item() if truth.numel() else 0.0
    err = (x - truth).abs().max().item() if truth.numel() else 0.0
    return err / scale if scale > 0 else err


def within_rule(err: float, ref_err: float, dtype: torch.dtype, out: torch.dtype | None = None):
    atol = ATOL[dtype]
    if out in (torch.float16, torch.bfloat16):
        atol += torch.finfo(out).eps / 2  # one rounding of a low-precision result
    return err <= 2 * ref_err + atol


def to_dev(x: torch.Tensor) -> torch.Tensor:
    return x.to(DEVICE)


# --------------------------------------------------------------------------------------- gram


GRAM_CASES = [(t, p, torch.float32) for t in TASKS for p in COLUMNS]
GRAM_CASES += [(t, p, torch.bfloat16) for t in TASKS for p in (7, 65537)]
GRAM_CASES += [(t, 1000, d) for t in (3, 17, 64) for d in (torch.float16, torch.float64)]


@pytest.mark.parametrize(("T_", "P", "dtype"), GRAM_CASES)
def test_gram_matches_fp64(T_: int, P: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(T_ * 100003 + P)
    J = torch.randn(1, T_, P, generator=gen).to(dtype)
    truth = J.double() @ J.double().transpose(-1, -2)
    K = mtl_fast.gram(to_dev(J), backend="triton")
    assert K.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(K, K.transpose(-1, -2)), "not bitwise symmetric"
    err, ref_err = rel(K, truth), rel(ref.gram(J), truth)
    assert within_rule(err, ref_err, dtype), (err, ref_err)


@pytest.mark.parametrize("T_", [3, 16, 70, 130])  # 70 and 130: two and three 64-row tiles
def test_gram_batched_strided(T_: int) -> None:
    gen = torch.Generator().manual_seed(T_)
    base = torch.randn(2, 3, 2 * T_, 531, generator=gen)
    J = base[:, :, ::2, 5:517]  # strided rows, offset columns, leading batch dims
    K = mtl_fast.gram(to_dev(J), backend="triton")
    truth = J.double() @ J.double().transpose(-1, -2)
    assert K.shape == (2, 3, T_, T_)
    ref_err = rel(ref.gram(J.reshape(-1, T_, 512)), truth.reshape(-1, T_, T_))
    assert within_rule(rel(K, truth), ref_err, torch.float32)


def test_gram_column_stride() -> None:
    J = torch.randn(777, 5).T  # column stride 5, row stride 1
    K = mtl_fast.gram(to_dev(J), backend="triton")
    truth = J.double() @ J.double().T
    assert within_rule(rel(K, truth), rel(ref.gram(J[None]), truth), torch.float32)


def test_gram_is_reproducible() -> None:
    J = to_dev(torch.randn(7, 300_001))
    first = mtl_fast.gram(J, backend="triton")
    assert torch.equal(first, mtl_fast.gram(J, backend="triton"))


def test_gram_list_of_arena_views_and_of_separate_blocks() -> None:
    trunk = torch.nn.Sequential(torch.nn.Linear(9, 13), torch.nn.Tanh(), torch.nn.Linear(13, 4))
    arena = mtl_fast.TaskGradients(list(trunk.parameters()), num_tasks=3)
    x = torch.randn(16, 9)
    losses = [trunk(x).pow(k + 1).mean() for k in range(3)]
    arena.backward(losses)
    truth = arena.J.double() @ arena.J.double().T
    views = [to_dev(b) for b in arena.per_parameter()]  # adjacent column slices: one launch
    K = mtl_fast.gram(views, backend="triton")
    assert within_rule(rel(K, truth), rel(ref.gram(arena.J[None]), truth), torch.float32)
    separate = [to_dev(b.clone()) for b in arena.per_parameter()]  # one launch per block
    separate[0] = to_dev(arena.per_parameter()[0].transpose(1, 2).clone()).transpose(1, 2)
    K2 = mtl_fast.gram(separate, backend="triton")
    assert within_rule(rel(K2, truth), rel(ref.gram(arena.J[None]), truth), torch.float32)


# ------------------------------------------------------------------------------------ combine


COMBINE_CASES = [(t, p, torch.float32) for t in TASKS for p in (7, 65537)]
COMBINE_CASES += [(t, 1000, d) for t in (2, 17) for d in (torch.bfloat16, torch.float16)]
COMBINE_CASES += [(5, 1000, torch.float64)]


@pytest.mark.parametrize(("T_", "P", "dtype"), COMBINE_CASES)
def test_combine_matches_fp64(T_: int, P: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(T_ + P)
    J = torch.randn(2, T_, P, generator=gen).to(dtype)
    w = torch.rand(2, T_, generator=gen)
    truth = torch.einsum("bt,btp->bp", w.double(), J.double())
    d = mtl_fast.combine(to_dev(J), to_dev(w), backend="triton")
    assert d.dtype == dtype and d.shape == (2, P)
    assert within_rule(rel(d, truth), rel(ref.combine(J, w), truth), dtype, out=dtype)


def test_combine_strided() -> None:
    J = torch.randn(4, 9, 301)[:, ::3, 1:300]
    w = torch.rand(4, 6)[:, ::2]
    d = mtl_fast.combine(to_dev(J), to_dev(w), backend="triton")
    truth = torch.einsum("bt,btp->bp", w.double(), J.double())
    assert within_rule(rel(d, truth), rel(ref.combine(J, w), truth), torch.float32)


# ----------------------------------------------------------------------------------- min_norm


def solver_batch(T_: int, gen: torch.Generator) -> torch.Tensor:
    kinds = [
        psd_with_rank(T_, T_, gen),
        psd_with_rank(T_, 1, gen),
        conflicting_gram(T_, gen),
        duplicated_gram(T_, gen),
        psd_with_rank(T_, T_, gen) * 1e12,
        torch.zeros(T_, T_, dtype=torch.float64),
    ]
    if T_ <= 8:
        # Low rank with 0 in the hull: at T = 40 the reference, too, needs > 1000 iterations
        # for a gap of 1e-8, which the interpreter would take minutes to replay.
        kinds.append(psd_with_rank(T_, max(1, T_ // 3), gen) * 1e-12)
    return torch.stack(kinds)


@pytest.mark.parametrize("T_", [2, 3, 5, 8, 17, 40, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_min_norm_reaches_the_optimum(T_: int, dtype: torch.dtype) -> None:
    K = solver_batch(T_, torch.Generator().manual_seed(T_))
    if T_ >= 40:  # the interpreter pays per operation: the largest cases keep 4 and 2 kinds
        K = K[:4] if T_ == 40 else K[[0, 2]]
    w_star = ref.min_norm(K, max_iter=1000, tol=1e-10, sync_free=False)
    w = mtl_fast.min_norm(to_dev(K.to(dtype)), backend="triton", tol=1e-8, max_iter=1000)
    assert w.dtype == dtype and w.shape == (K.shape[0], T_)
    assert_on_simplex(w.cpu(), atol=1e-5 if dtype == torch.float32 else 1e-12)
    scale = K.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)
    excess = (objective(K, w.cpu()) - objective(K, w_star)) / scale
    assert excess.max().item() <= 1e-6, excess


def test_min_norm_agrees_with_reference_weights() -> None:
    gen = torch.Generator().manual_seed(0)
    K = torch.stack([psd_with_rank(6, 6, gen) for _ in range(5)])  # unique optimum each
    w_ref = ref.min_norm(K, max_iter=500, tol=1e-12, sync_free=False)
    w = mtl_fast.min_norm(to_dev(K), backend="triton", max_iter=500, tol=1e-12)
    assert torch.allclose(w.cpu(), w_ref, atol=1e-7), (w, w_ref)


def test_min_norm_iteration_budget_is_the_references() -> None:
    K = solver_batch(5, torch.Generator().manual_seed(1))
    for budget in (0, 1, 2):
        w = mtl_fast.min_norm(to_dev(K), backend="triton", max_iter=budget)
        w_ref = ref.min_norm(K, max_iter=budget, tol=1e-6, sync_free=True)
        assert torch.allclose(w.cpu(), w_ref, atol=1e-9), (budget, w, w_ref)


def test_min_norm_scale_invariant_and_degenerate() -> None:
    gen = torch.Generator().manual_seed(2)
    K = conflicting_gram(8, gen)
    w = mtl_fast.min_norm(to_dev(K), backend="triton")
    for s in (2.0**-80, 2.0**70):  # powers of two: the normalised K is the same bits
        assert torch.equal(mtl_fast.min_norm(to_dev(K * s), backend="triton"), w)
    assert torch.equal(
        mtl_fast.min_norm(to_dev(torch.eye(1)), backend="triton").cpu(), torch.ones(1)
    )
    for degenerate in (torch.zeros(4, 4), torch.ones(4, 4), torch.tensor([[1.0, -1], [-1, 1]])):
        assert_on_simplex(mtl_fast.min_norm(to_dev(degenerate), backend="triton").cpu())


def test_min_norm_sync_free_flag_changes_nothing() -> None:
    K = to_dev(solver_batch(5, torch.Generator().manual_seed(3)))
    a = mtl_fast.min_norm(K, backend="triton", sync_free=True)
    assert torch.equal(a, mtl_fast.min_norm(K, backend="triton", sync_free=False))


def test_min_norm_above_max_tasks_says_so() -> None:
    from mtl_fast.kernels.triton import MAX_TASKS

    # The dispatcher refuses from the backend's TASK_LIMITS before any kernel is launched.
    with pytest.raises(mtl_fast.BackendUnavailableError, match=f"supports T ≤ {MAX_TASKS} tasks"):
        mtl_fast.min_norm(to_dev(torch.eye(MAX_TASKS + 1)), backend="triton")
    # "auto" passes over the backend instead (the reference solves it on the CPU).
    w = mtl_fast.min_norm(torch.eye(MAX_TASKS + 1))
    assert torch.allclose(w, torch.full((MAX_TASKS + 1,), 1 / (MAX_TASKS + 1)))


# --------------------------------------------------------------------------------------- Adam


SCHEDULE = [[0], [2], [0, 1, 2], [1], [0, 2], [2, 0], [1], [0, 1, 2]]


def _run_multi_adam(
    backend: str,
    dtype: torch.dtype,
    *,
    weight_decay: float,
    lr: float | torch.Tensor,
    betas: tuple[float, float],
    rows: str,
) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    P = 1037
    p = torch.nn.Parameter(to_dev(torch.randn(P, generator=gen).to(dtype)))
    opt = mtl_fast.MultiAdam(
        [p], num_tasks=3, lr=lr, betas=betas, weight_decay=weight_decay, backend=backend
    )
    for tasks in SCHEDULE:
        G = torch.randn(3, P, generator=gen).to(dtype)
        weights = (torch.rand(len(tasks), generator=gen) + 0.5).tolist()
        if rows == "subset":  # row i belongs to tasks[i]
            G = G[: len(tasks)]
        elif rows == "strided":  # a column stride: the launcher makes it contiguous
            G = torch.randn(P, 3, generator=gen).to(dtype).T
        elif rows == "aliased":  # one gradient for every stepped state (row stride 0)
            G = torch.randn(1, P, generator=gen).to(dtype).expand(len(tasks), P)
        opt.step(to_dev(G), tasks=tasks, weights=weights)
    return [p.detach(), opt.exp_avg, opt.exp_avg_sq, opt.steps]


@pytest.mark.parametrize(
    ("dtype", "weight_decay", "lr", "betas", "rows"),
    [
        (torch.float32, 0.0, 1e-2, (0.9, 0.999), "all"),
        (torch.float32, 0.05, 1e-2, (0.9, 0.999), "subset"),
        (torch.float32, 0.01, "tensor", (0.3, 0.99), "strided"),  # β1 < 0.5: lerp's 2nd form
        (torch.float32, 0.01, 1e-2, (0.9, 0.999), "aliased"),
        (torch.float64, 0.01, 1e-2, (0.9, 0.999), "all"),
        (torch.bfloat16, 0.01, 1e-2, (0.9, 0.999), "all"),
    ],
)
def test_multi_adam_matches_reference(dtype, weight_decay, lr, betas, rows) -> None:
    kw = dict(weight_decay=weight_decay, betas=betas, rows=rows)
    lr_of = (lambda: to_dev(torch.tensor(1e-2))) if lr == "tensor" else (lambda: lr)
    ours = _run_multi_adam("triton", dtype, lr=lr_of(), **kw)
    theirs = _run_multi_adam("reference", dtype, lr=lr_of(), **kw)
    assert torch.equal(ours[3], theirs[3]), "step counts differ"
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2 * 2.0**-8}[dtype]
    for name, a, b in zip(("param", "exp_avg", "exp_avg_sq"), ours, theirs):
        assert rel(a, b) <= tol, (name, rel(a, b))


@pytest.mark.parametrize("P", [1, 7, 65537])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_combine_adam_matches_reference(P: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(P)
    state = [torch.randn(P, generator=gen).to(dtype)] + [torch.zeros(P, dtype=dtype)] * 2
    state.append(torch.zeros(1))
    ours = [to_dev(x.clone()) for x in state]
    theirs = [x.clone() for x in state]
    for k in range(5):
        J = torch.randn(4, P, generator=gen).to(dtype)
        w = torch.rand(4, generator=gen)
        kw = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01 * k)
        mtl_fast.combine_adam(to_dev(J), to_dev(w), *ours, backend="triton", **kw)
        mtl_fast.combine_adam(J, w, *theirs, backend="reference", **kw)
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert torch.equal(ours[3].cpu(), theirs[3])
    for a, b in zip(ours[:3], theirs[:3]):
        assert rel(a, b) <= tol, rel(a, b)


# --------------------------------------------------------------------- compiled for the GPU


def _bundled_ptxas() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


@pytest.mark.slow
@pytest.mark.skipif(not _bundled_ptxas().exists(), reason="this Triton wheel ships no ptxas")
def test_every_kernel_compiles_for_sm90() -> None:
    """The interpreter checks the arithmetic; this compiles each launch for an H100 with ptxas."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "mtl_fast.kernels.triton.aot", "--arch", "90", "--quick"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "specializations compiled for sm_90" in out.stdout


# ---------------------------------------------------------------------------- GPU only


@pytest.mark.gpu
@on_gpu
def test_gram_bitwise_deterministic_with_many_splits() -> None:
    J = to_dev(torch.randn(8, 10_000_019, dtype=torch.bfloat16))
    runs = [mtl_fast.gram(J, backend="triton") for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    K = to_dev(
        torch.stack([conflicting_gram(16, torch.Generator().manual_seed(i)) for i in range(64)])
    )
    w = [mtl_fast.min_norm(K.float(), backend="triton") for _ in range(2)]
    assert torch.equal(w[0], w[1])


@pytest.mark.gpu
@on_gpu
def test_gram_with_more_than_2_31_elements() -> None:
    P = 2**30 + 4099  # T·P > 2³¹ with T = 3
    J = to_dev(torch.randn(1, 3, P, dtype=torch.bfloat16))
    K = mtl_fast.gram(J, backend="triton").cpu()
    truth = torch.zeros(3, 3, dtype=torch.float64)
    for start in range(0, P, 2**27):
        block = J[0, :, start : start + 2**27].double()
        truth += (block @ block.T).cpu()
    assert rel(K[0], truth) <= 1e-5, rel(K[0], truth)


@pytest.mark.gpu
@on_gpu
def test_whole_step_captures_in_a_cuda_graph() -> None:
    """gram → min_norm → combine_adam, then multi_adam, captured once and replayed."""
    gen = torch.Generator().manual_seed(0)
    Tn, P = 5, 1_000_003
    J = to_dev(torch.randn(Tn, P, generator=gen))
    state = [
        to_dev(torch.randn(P, generator=gen)),
        to_dev(torch.zeros(P)),
        to_dev(torch.zeros(P)),
        to_dev(torch.zeros(1)),
    ]
    eager = [x.clone() for x in state]
    lr = to_dev(torch.tensor(1e-3))
    p = torch.nn.Parameter(to_dev(torch.randn(P, generator=gen)))
    opt = mtl_fast.MultiAdam([p], num_tasks=Tn, lr=lr, on_nonfinite="ignore", backend="triton")
    p_eager = torch.nn.Parameter(p.detach().clone())
    opt_eager = mtl_fast.MultiAdam(
        [p_eager], num_tasks=Tn, lr=lr, on_nonfinite="ignore", backend="triton"
    )

    def step(st: list[torch.Tensor], o: mtl_fast.MultiAdam) -> None:
        w = mtl_fast.min_norm(mtl_fast.gram(J, backend="triton"), backend="triton")
        mtl_fast.combine_adam(J, w, *st, lr=lr, weight_decay=0.01, backend="triton")
        o.step(J, weights=w)

    warm = mtl_fast.MultiAdam(
        [torch.nn.Parameter(p.detach().clone())], num_tasks=Tn, lr=lr, on_nonfinite="ignore"
    )
    step([x.clone() for x in state], warm)  # compiles every kernel before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(state, opt)
    for _ in range(3):
        graph.replay()
        step(eager, opt_eager)
    torch.cuda.synchronize()
    for a, b in zip(state, eager):
        assert torch.equal(a, b)
    assert torch.equal(p, p_eager) and torch.equal(opt.exp_avg, opt_eager.exp_avg)
