"""The CUDA kernels against the pure-PyTorch references (needs a GPU and the built extension).

Tolerance rule (flash-attention's): the truth is fp64 on the very inputs the kernel sees; the
kernel's error may be at most twice the reference's own error at the same dtype plus a small
atol. Every test here skips with the reason on a machine without a CUDA device or without the
compiled extension (build it with ``python -m mtl_fast.kernels.cuda`` or ``MTL_FAST_CUDA_JIT=1``).
"""

from __future__ import annotations

import pytest
import torch

import mtl_fast
from mtl_fast._core.contracts import AdamHyper, AdamState
from mtl_fast._core.dispatch import _load
from mtl_fast.kernels import reference as ref
from mtl_fast.tools import verify


def _cuda_backend_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA device (none visible on this machine)"
    loaded = _load("cuda")
    if isinstance(loaded, str):
        return f"the cuda backend is unavailable: {loaded}"
    return loaded.device_reason(torch.device("cuda"))


_REASON = _cuda_backend_reason()
# Every test here needs a GPU: `-m gpu` selects them all, the slow T·P > 2³¹ one included.
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def _rel(x: torch.Tensor, truth: torch.Tensor) -> float:
    scale = truth.abs().max().item() if truth.numel() else 0.0
    err = (x.double().cpu() - truth.cpu()).abs().max().item() if truth.numel() else 0.0
    return err / scale if scale > 0 else err


def _cuda():  # the backend module, for calls in the backend calling convention
    import mtl_fast.kernels.cuda as cuda

    return cuda


# ---- gram -------------------------------------------------------------------------------------

GRAM_SHAPES = [
    (1, 1, 1),
    (1, 2, 7),
    (1, 3, 1000),
    (2, 5, 4099),
    (1, 16, 333),
    (1, 17, 333),
    (3, 32, 1000),
    (1, 33, 1025),
    (2, 64, 129),
    (1, 65, 100),
    (1, 130, 77),
    (1, 4, 1 << 20),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,P", GRAM_SHAPES)
def test_gram_matches_reference(B: int, T: int, P: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(B * 1000 + T * 10 + P)
    J = torch.randn(B, T, P, generator=gen).to(dtype)
    truth = J.double() @ J.double().transpose(-1, -2)
    ref_err = _rel(ref.gram(J), truth)
    K = _cuda().gram(J.cuda())
    assert K.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert K.shape == (B, T, T)
    assert torch.equal(K, K.transpose(-1, -2)), "K must be exactly symmetric"
    assert _rel(K, truth) <= 2 * ref_err + ATOL[dtype]


def test_gram_public_api_and_noncontiguous_input() -> None:
    J = torch.randn(6, 4, 300, device="cuda")[::2].transpose(0, 1)  # (4, 3, 300), strided
    K = mtl_fast.gram(J, backend="cuda")
    assert torch.allclose(K, ref.gram(J.reshape(-1, 3, 300)).reshape(4, 3, 3), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_list_matches_reference(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(11)
    T = 7
    blocks = [torch.randn(T, *s, generator=gen).to(dtype) for s in [(5,), (3, 4), (1,), (2000,)]]
    flat = [b.reshape(T, -1) for b in blocks]
    Jd = torch.cat([f.double() for f in flat], dim=1)
    truth = Jd @ Jd.T
    ref_err = _rel(ref.gram_list(flat), truth)
    K = mtl_fast.gram([b.cuda() for b in blocks], backend="cuda")
    assert torch.equal(K, K.T)
    assert _rel(K, truth) <= 2 * ref_err + ATOL[dtype]


def test_gram_is_deterministic() -> None:
    J = torch.randn(2, 40, 100_003, device="cuda")
    assert torch.equal(_cuda().gram(J), _cuda().gram(J))


# ---- sign_conflict ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,P", [(1, 1, 1), (1, 2, 7), (2, 5, 4099), (1, 33, 1025), (1, 70, 300)])
def test_sign_conflict_counts_exactly_like_the_reference(
    B: int, T: int, P: int, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(T + P)
    J = torch.randn(B, T, P, generator=gen)
    J[torch.rand(B, T, P, generator=gen) < 0.2] = 0.0  # zeros never conflict
    if dtype == torch.float64:
        J[..., :3] = 1e-300 * torch.sign(J[..., :3])  # signs of values that fp32 would flush
    J = J.to(dtype)
    C = _cuda().sign_conflict(J.cuda())
    assert C.dtype == torch.float64 and C.shape == (B, T, T)
    assert torch.equal(C.cpu(), ref.sign_conflict(J))  # exact counts, divided by P in fp64


# ---- combine ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,T,P", GRAM_SHAPES[:10])
def test_combine_matches_reference(B: int, T: int, P: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(T * 7 + P)
    J = torch.randn(B, T, P, generator=gen).to(dtype)
    w = torch.rand(B, T, generator=gen)
    w = w / w.sum(-1, keepdim=True)
    truth = torch.einsum("bt,btp->bp", w.double(), J.double())
    ref_err = _rel(ref.combine(J, w), truth)
    d = _cuda().combine(J.cuda(), w.cuda())
    assert d.dtype == dtype and d.shape == (B, P)
    half_ulp = torch.finfo(dtype).eps / 2 if dtype in (torch.float16, torch.bfloat16) else 0.0
    assert _rel(d, truth) <= 2 * ref_err + ATOL[dtype] + half_ulp


def test_combine_is_deterministic() -> None:
    J = torch.randn(1, 33, 1_000_003, device="cuda")
    w = torch.rand(1, 33, device="cuda")
    assert torch.equal(_cuda().combine(J, w), _cuda().combine(J, w))


# ---- min_norm ---------------------------------------------------------------------------------


def _objective(w: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bi,bij,bj->b", w, K, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("T", [2, 3, 5, 8, 17, 31, 32, 33, 40, 63, 64, 65, 100, 130])
def test_min_norm_reaches_the_reference_optimum(T: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(T)
    samples = verify.gram_samples(T, gen)
    Kd = torch.stack(list(samples.values()))
    w_star = ref.min_norm(Kd, max_iter=2000, tol=1e-12, sync_free=False)
    f_star = _objective(w_star, Kd)
    scale = Kd.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)
    w = _cuda().min_norm(Kd.to(dtype).cuda(), max_iter=2000, tol=1e-7, sync_free=True)
    assert w.dtype == dtype and w.shape == (len(samples), T)
    w = w.cpu().double()
    assert torch.isfinite(w).all()
    assert (w >= 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(len(samples), dtype=torch.float64), atol=1e-6)
    excess = (_objective(w, Kd) - f_star) / scale
    assert excess.max().item() <= 1e-6, dict(zip(samples, excess.tolist()))


def test_min_norm_kkt_and_stopping_rule() -> None:
    gen = torch.Generator().manual_seed(5)
    J = torch.randn(16, 12, 40, generator=gen, dtype=torch.float64)
    K = J @ J.transpose(-1, -2)
    tol = 1e-9
    w = _cuda().min_norm(K.cuda(), max_iter=5000, tol=tol, sync_free=True).cpu()
    g = torch.einsum("bij,bj->bi", K, w)
    f = (w * g).sum(-1)
    scale = K.diagonal(dim1=-2, dim2=-1).amax(-1)
    gap = 2 * (f - g.min(-1).values) / scale
    assert gap.max().item() <= tol * 1.01  # the kernel stops only once the gap is below tol
    # KKT: Σ_i w_i ((Kw)_i − min_j (Kw)_j) = f − min_j (Kw)_j = gap / 2, so every task with
    # w_i ≥ 1e-3 has (Kw)_i within gap / 2e-3 ≤ 5e-7 (relative) of the minimum.
    support = w >= 1e-3
    spread = torch.where(support, g - g.min(-1, keepdim=True).values, 0.0) / scale[:, None]
    assert spread.max().item() <= 1e-6


@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-10, 1.0, 1e15, 1e30])
def test_min_norm_is_scale_invariant(scale: float) -> None:
    gen = torch.Generator().manual_seed(1)
    J = torch.randn(4, 6, 30, generator=gen, dtype=torch.float64)
    K = J @ J.transpose(-1, -2)
    w1 = _cuda().min_norm(K.cuda(), max_iter=1000, tol=1e-10, sync_free=True)
    ws = _cuda().min_norm((K * scale).cuda(), max_iter=1000, tol=1e-10, sync_free=True)
    assert torch.isfinite(ws).all()
    assert torch.allclose(ws.sum(-1), torch.ones(4, dtype=torch.float64, device="cuda"))
    if scale > 0:
        # Same optimum (objective within the tolerance); weights agree up to flat directions.
        f1 = _objective(w1.cpu(), K) / K.diagonal(dim1=-2, dim2=-1).amax(-1)
        fs = _objective(ws.cpu(), K) / K.diagonal(dim1=-2, dim2=-1).amax(-1)
        assert (fs - f1).abs().max().item() <= 1e-9
        assert torch.allclose(ws, w1, atol=1e-4)


def test_min_norm_degenerate_grams() -> None:
    u = torch.randn(10, dtype=torch.float64)
    cases = {
        "zero": torch.zeros(5, 5, dtype=torch.float64),
        "opposite": torch.stack([u, -u]) @ torch.stack([u, -u]).T,
        "rank-1 same sign": torch.stack([u, 2 * u, 3 * u]) @ torch.stack([u, 2 * u, 3 * u]).T,
        "duplicates": torch.stack([u, u, u, u]) @ torch.stack([u, u, u, u]).T,
    }
    for name, K in cases.items():
        w = mtl_fast.min_norm(K.cuda(), backend="cuda").cpu()
        assert torch.isfinite(w).all(), name
        assert (w >= 0).all() and abs(w.sum().item() - 1) < 1e-9, name
        w_ref = ref.min_norm(K.unsqueeze(0), max_iter=256, tol=1e-6, sync_free=False)[0]
        f, f_ref = w @ K @ w, w_ref @ K @ w_ref
        assert f.item() <= f_ref.item() + 1e-6 * max(K.diagonal().max().item(), 1e-300), name
    opposite = mtl_fast.min_norm(cases["opposite"].cuda(), backend="cuda").cpu()
    assert torch.allclose(opposite, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-9)


def test_min_norm_zero_iterations_returns_the_start_vertex() -> None:
    K = torch.diag(torch.tensor([3.0, 1.0, 2.0])).unsqueeze(0).cuda()
    w = _cuda().min_norm(K, max_iter=0, tol=1e-6, sync_free=True)
    assert torch.equal(w.cpu(), torch.tensor([[0.0, 1.0, 0.0]]))


def test_min_norm_is_deterministic() -> None:
    J = torch.randn(64, 40, 80, device="cuda")
    K = J @ J.transpose(-1, -2)
    a = _cuda().min_norm(K, max_iter=500, tol=1e-7, sync_free=True)
    b = _cuda().min_norm(K, max_iter=500, tol=1e-7, sync_free=True)
    assert torch.equal(a, b)


# ---- Adam -------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("lr_is_tensor", [False, True])
@pytest.mark.parametrize("P", [1, 7, 1000, 65537])
def test_multi_adam_matches_reference_every_state(
    P: int, lr_is_tensor: bool, weight_decay: float
) -> None:
    gen = torch.Generator().manual_seed(P)
    T = 4
    p = torch.randn(P, generator=gen)
    state = [p, torch.zeros(T, P), torch.zeros(T, P), torch.zeros(T)]
    ours = [x.clone().cuda() for x in state]
    theirs = [x.clone() for x in state]
    schedule = [[0], [2], [0, 1, 2, 3], [1], [3, 0], [2], [0, 1, 2, 3], [1, 3]]
    for tasks in schedule:
        G = torch.randn(T, P, generator=gen)
        idx = torch.tensor(tasks)
        w = torch.rand(len(tasks), generator=gen) + 0.5
        lr = torch.tensor(3e-3) if lr_is_tensor else 3e-3
        kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay)
        ref.multi_adam(AdamState(*theirs), G, idx, idx, w.double(), AdamHyper(lr=lr, **kw))
        lr_dev = lr.cuda() if isinstance(lr, torch.Tensor) else lr
        _cuda().multi_adam(
            AdamState(*ours),
            G.cuda(),
            idx.cuda(),
            idx.cuda(),
            w.double().cuda(),
            AdamHyper(lr=lr_dev, **kw),
        )
    for name, a, b in zip(("param", "exp_avg", "exp_avg_sq", "step"), ours, theirs):
        assert _rel(a, b.double()) <= 1e-5, name
    assert torch.equal(ours[3].cpu(), theirs[3])


@pytest.mark.parametrize("pdtype", [torch.bfloat16, torch.float16])
def test_multi_adam_low_precision_params(pdtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    T, P = 3, 5000
    p = torch.randn(P, generator=gen).to(pdtype)
    ours = [
        p.clone().cuda(),
        torch.zeros(T, P).cuda(),
        torch.zeros(T, P).cuda(),
        torch.zeros(T).cuda(),
    ]
    theirs = [p.clone(), torch.zeros(T, P), torch.zeros(T, P), torch.zeros(T)]
    for tasks in ([0, 1, 2], [1], [2, 0]):
        G = torch.randn(T, P, generator=gen).to(pdtype)
        idx = torch.tensor(tasks)
        w = torch.ones(len(tasks))
        kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
        ref.multi_adam(AdamState(*theirs), G, idx, idx, w.double(), AdamHyper(**kw))
        _cuda().multi_adam(
            AdamState(*ours), G.cuda(), idx.cuda(), idx.cuda(), w.double().cuda(), AdamHyper(**kw)
        )
    ulp = torch.finfo(pdtype).eps
    assert _rel(ours[0], theirs[0].double()) <= 2 * ulp
    assert _rel(ours[1], theirs[1].double()) <= 1e-5
    assert _rel(ours[2], theirs[2].double()) <= 1e-5


def test_multi_adam_skips_tasks_outside_the_step() -> None:
    T, P = 5, 100
    m = torch.randn(T, P, device="cuda")
    v = torch.rand(T, P, device="cuda")
    steps = torch.arange(T, dtype=torch.float32, device="cuda")
    m0, v0, s0 = m.clone(), v.clone(), steps.clone()
    p = torch.randn(P, device="cuda")
    idx = torch.tensor([1, 3], device="cuda")
    ones = torch.ones(2, dtype=torch.float64, device="cuda")
    hyper = AdamHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    G = torch.randn(T, P, device="cuda")
    _cuda().multi_adam(AdamState(p, m, v, steps), G, idx, idx, ones, hyper)
    for t in (0, 2, 4):
        assert torch.equal(m[t], m0[t]) and torch.equal(v[t], v0[t]) and steps[t] == s0[t]
    assert steps[1] == s0[1] + 1 and steps[3] == s0[3] + 1


@pytest.mark.parametrize("jdtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("P", [1, 7, 1000, 65537])
def test_combine_adam_matches_reference(P: int, jdtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(P + 1)
    T = 5
    state = [torch.randn(P, generator=gen), torch.zeros(P), torch.zeros(P), torch.zeros(1)]
    ours = [x.clone().cuda() for x in state]
    theirs = [x.clone() for x in state]
    for _ in range(7):
        J = torch.randn(T, P, generator=gen).to(jdtype)
        w = torch.rand(T, generator=gen)
        kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
        ref.combine_adam(
            AdamState(theirs[0], theirs[1][None], theirs[2][None], theirs[3]), J, w, AdamHyper(**kw)
        )
        _cuda().combine_adam(
            AdamState(ours[0], ours[1][None], ours[2][None], ours[3]),
            J.cuda(),
            w.cuda(),
            AdamHyper(**kw),
        )
    tol = 1e-5 if jdtype == torch.float32 else 2 * torch.finfo(jdtype).eps
    for name, a, b in zip(("param", "exp_avg", "exp_avg_sq", "step"), ours, theirs):
        assert _rel(a, b.double()) <= tol, name


# ---- the whole step: verify matrix, large inputs, torch.compile, CUDA graphs -----------------


def test_verify_matrix_passes_for_cuda() -> None:
    checks, skipped = verify.run(["cuda"], device="cuda", quick=False)
    assert not skipped, skipped
    failed = [c for c in checks if not c.passed]
    assert not failed, verify.format_table(failed)
    assert {c.op for c in checks} == set(verify.CHECKS)  # every op the matrix knows


@pytest.mark.slow
def test_gram_and_combine_beyond_32_bit_offsets() -> None:
    T, P = 3, (1 << 31) // 3 + 1000  # T·P > 2³¹ elements (≈ 4.3 GB in bf16)
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * T * P * 2:
        pytest.skip(f"needs ≈ {3 * T * P * 2 / 2**30:.0f} GiB of free GPU memory")
    J = torch.empty(1, T, P, dtype=torch.bfloat16, device="cuda")
    J.normal_(generator=torch.Generator(device="cuda").manual_seed(0))
    K = _cuda().gram(J)
    # The truth, chunked so that no single matmul needs 64-bit offsets.
    truth = torch.zeros(T, T, dtype=torch.float64, device="cuda")
    for start in range(0, P, 1 << 26):
        c = J[0, :, start : start + (1 << 26)].double()
        truth += c @ c.T
    assert _rel(K[0], truth) <= 1e-5
    w = torch.tensor([[0.2, 0.3, 0.5]], device="cuda")
    d = _cuda().combine(J, w)
    tail = J[0, :, -1000:].float()
    assert torch.allclose(d[0, -1000:].float(), w[0] @ tail, rtol=1e-2, atol=1e-2)


def test_step_runs_under_torch_compile() -> None:
    ops = torch.ops.mtl_fast_cuda

    def mgda_step(J, p, m, v, step):
        K = ops.gram(J.unsqueeze(0))
        w = ops.min_norm(K, 200, 1e-6)[0]
        ops.combine_adam(p, J, w, m, v, step, None, 1e-3, 0.9, 0.999, 1e-8, 0.0)
        return w

    J = torch.randn(6, 10_000, device="cuda")
    state = [torch.randn(10_000, device="cuda"), torch.zeros(10_000, device="cuda"),
             torch.zeros(10_000, device="cuda"), torch.zeros(1, device="cuda")]  # fmt: skip
    eager = [x.clone() for x in state]
    compiled_state = [x.clone() for x in state]
    w_eager = mgda_step(J, *eager)
    w_comp = torch.compile(mgda_step, fullgraph=True)(J, *compiled_state)
    assert torch.equal(w_eager, w_comp)
    for a, b in zip(eager, compiled_state):
        assert torch.equal(a, b)


def test_step_is_cuda_graph_capturable() -> None:
    cuda = _cuda()
    J = torch.randn(5, 50_000, device="cuda")
    p = torch.randn(50_000, device="cuda")
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    step = torch.zeros(1, device="cuda")
    lr = torch.tensor(1e-3, dtype=torch.float64, device="cuda")

    def run() -> torch.Tensor:
        K = cuda.gram(J.unsqueeze(0))
        w = cuda.min_norm(K, max_iter=200, tol=1e-6, sync_free=True)[0]
        hyper = AdamHyper(lr=lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
        cuda.combine_adam(AdamState(p, m[None], v[None], step), J, w, hyper)
        return w

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()  # warm-up (allocations, shared-memory attribute) outside the capture
    torch.cuda.current_stream().wait_stream(side)
    p_before = p.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w_graph = run()
    graph.replay()
    torch.cuda.synchronize()
    assert step.item() == 2.0  # warm-up + one replay (capture itself does not execute)
    assert not torch.equal(p, p_before)
    w_eager = cuda.min_norm(cuda.gram(J.unsqueeze(0)), max_iter=200, tol=1e-6, sync_free=True)[0]
    assert torch.equal(w_graph, w_eager)
