"""gram and gram_list (flat, batched, strided and per-parameter list input) on every backend.

The truth is float64 on the very inputs the backend sees; the tolerance is the rule of
:mod:`mtl_fast._core.precision` (``tests/helpers.py``). The backend-specific tests at the end:
the emulator's chunk plans, Triton's fp32 precision choice, and on a GPU bitwise determinism and
T·P > 2³¹.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import mtl_fast
from mtl_fast._core.precision import accumulation_dtype, relative_error
from mtl_fast.kernels import reference as ref
from tests.backends import for_backends, for_batched_shapes, gpu, requires_gpu
from tests.helpers import (
    BF16,
    DTYPES,
    FP32,
    FP64,
    assert_psd,
    assert_within_rule,
    conflicting_gram,
    every_dtype,
    gram_truth,
    reference_gram,
)

TASKS = [1, 2, 3, 5, 8, 17, 40, 64]
COLUMNS = [1, 7, 1000, 65537]

GRID = [(d, T, P) for d in DTYPES for T in TASKS for P in COLUMNS]
# One host thread per CUDA thread: small problems, but every tile shape (16, 32 and several
# 64-row tiles); the full grid runs on the reference and on a GPU. The emulator's chunk plans
# for several SM counts are its own test below.
GRID_EMULATED = [
    (d, T, P) for d in DTYPES for T, P in [(1, 1), (2, 7), (3, 1000), (17, 333), (33, 1025)]
]


@for_backends("gram", "dtype, T, P", GRID, emulator=GRID_EMULATED)
def test_gram_matches_fp64(backend, dtype, T, P) -> None:
    gen = torch.Generator().manual_seed(T * 100003 + P)
    J = torch.randn(1, T, P, generator=gen).to(dtype)
    K = backend.op("gram")(backend.to(J)).cpu()
    assert K.shape == (1, T, T) and K.dtype == accumulation_dtype(dtype)
    assert torch.equal(K, K.transpose(-1, -2)), "not bitwise symmetric"
    assert_within_rule(K, gram_truth(J), ref.gram(J), dtype, is_reference=backend.is_reference)
    assert_psd(K[0])


SHAPES = [
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
SHAPES_EMULATED = [(2, 5, 4099), (1, 16, 333), (2, 64, 129), (1, 65, 100)]


@for_batched_shapes("gram", SHAPES, SHAPES_EMULATED)
def test_gram_batched_matches_fp64(backend, dtype, B, T, P) -> None:
    """Several problems at once, tile edges (16/17, 32/33, 64/65 rows, several tiles), long P.

    The reference is held to ATOL up to P = 65537 (as in the grid above and in ``mtl-fast
    verify``): an fp32 sum of 2²⁰ terms is itself off by about 6e-5, and the kernels are held to
    twice the reference's error there."""
    gen = torch.Generator().manual_seed(B * 1000 + T * 10 + P)
    J = torch.randn(B, T, P, generator=gen).to(dtype)
    K = backend.op("gram")(backend.to(J)).cpu()
    assert K.shape == (B, T, T) and K.dtype == accumulation_dtype(dtype)
    assert torch.equal(K, K.transpose(-1, -2)), "not bitwise symmetric"
    strict = backend.is_reference and P <= 65537
    assert_within_rule(K, gram_truth(J), ref.gram(J), dtype, is_reference=strict)


# ----------------------------------------------------------------- the public op's layouts


@for_backends("gram", "T", [3, 16, 70, 130], emulator=[3, 16, 70])  # 70, 130: 2 and 3 tiles
def test_gram_batched_strided(backend, T) -> None:
    gen = torch.Generator().manual_seed(T)
    base = backend.to(torch.randn(2, 3, 2 * T, 531, generator=gen))
    J = base[:, :, ::2, 5:517]  # strided rows, offset columns, leading batch dims
    K = mtl_fast.gram(J, backend=backend.dispatch)
    assert K.shape == (2, 3, T, T)
    assert_within_rule(K, gram_truth(J), reference_gram(J), FP32, is_reference=backend.is_reference)


@for_backends("gram")
def test_gram_of_non_contiguous_batch_dims(backend) -> None:
    J = backend.to(torch.randn(6, 4, 300))[::2].transpose(0, 1)  # (4, 3, 300), strided
    K = mtl_fast.gram(J, backend=backend.dispatch)
    assert K.shape == (4, 3, 3)
    torch.testing.assert_close(K.cpu(), reference_gram(J), rtol=1e-5, atol=1e-4)
    assert_within_rule(K, gram_truth(J), reference_gram(J), FP32, is_reference=backend.is_reference)


@for_backends("gram")
def test_gram_column_stride(backend) -> None:
    J = backend.to(torch.randn(777, 5)).T  # column stride 5, row stride 1
    K = mtl_fast.gram(J, backend=backend.dispatch)
    assert_within_rule(K, gram_truth(J), reference_gram(J), FP32, is_reference=backend.is_reference)


@for_backends("gram")
def test_gram_leading_dims_and_strided_rows_fp64(backend) -> None:
    gen = torch.Generator().manual_seed(1)
    J = backend.to(torch.randn(2, 3, 4, 17, generator=gen, dtype=FP64))
    K = mtl_fast.gram(J, backend=backend.dispatch)
    assert K.shape == (2, 3, 4, 4)
    torch.testing.assert_close(K.cpu(), gram_truth(J))
    big = backend.to(torch.randn(6, 40, generator=gen, dtype=FP64))
    J = big[::2, 5:35]  # non-contiguous rows
    torch.testing.assert_close(mtl_fast.gram(J, backend=backend.dispatch).cpu(), gram_truth(J))


@for_backends(
    "gram",
    "B, T, P",
    [(1, 7, 300_001), (2, 40, 100_003)],
    emulator=[(1, 7, 30_001)],
)
def test_gram_is_reproducible(backend, B, T, P) -> None:
    J = backend.to(torch.randn(B, T, P))
    gram = backend.op("gram")
    assert torch.equal(gram(J), gram(J))


# ------------------------------------------------------------------------------- gram_list

LIST_CASES = {
    "T7-2006cols": (7, [(5,), (3, 4), (1,), (2000,)]),
    "T5-65592cols": (5, [(7,), (3, 4), (1,), (2, 3, 5), (65537,)]),
}


@for_backends(
    "gram_list",
    "dtype, case",
    [(d, c) for d in DTYPES for c in LIST_CASES],
    emulator=[(d, "T7-2006cols") for d in DTYPES],
)
def test_gram_list_matches_fp64(backend, dtype, case) -> None:
    """A list of per-parameter gradients (T, *shape) gives the Gram of their concatenation."""
    T, shapes = LIST_CASES[case]
    gen = torch.Generator().manual_seed(T)
    blocks = [torch.randn(T, *s, generator=gen).to(dtype) for s in shapes]
    flat = [b.reshape(T, -1) for b in blocks]
    truth = gram_truth(torch.cat(flat, dim=1))
    K = mtl_fast.gram([backend.to(b) for b in blocks], backend=backend.dispatch).cpu()
    assert K.shape == (T, T) and K.dtype == accumulation_dtype(dtype)
    assert torch.equal(K, K.T)
    assert_within_rule(K, truth, ref.gram_list(flat), dtype, is_reference=backend.is_reference)


@for_backends("gram_list")
def test_gram_list_fp64_sums_like_the_reference(backend) -> None:
    """Blocks accumulate into one K (the extension adds each block's Gram in place)."""
    gen = torch.Generator().manual_seed(7)
    blocks = [torch.randn(6, n, generator=gen, dtype=FP64) for n in (5, 300, 1)]
    K = backend.op("gram_list")([backend.to(b) for b in blocks]).cpu()
    assert relative_error(K, ref.gram_list(blocks)) <= 1e-13


@for_backends("gram_list")
def test_gram_list_of_arena_views_and_of_separate_blocks(backend) -> None:
    torch.manual_seed(0)
    trunk = torch.nn.Sequential(torch.nn.Linear(9, 13), torch.nn.Tanh(), torch.nn.Linear(13, 4))
    trunk = trunk.to(backend.device)
    arena = mtl_fast.TaskGradients(list(trunk.parameters()), num_tasks=3)
    x = backend.to(torch.randn(16, 9))
    arena.backward([trunk(x).pow(k + 1).mean() for k in range(3)])
    truth = gram_truth(arena.J)
    ref_K = ref.gram(arena.J.cpu()[None])[0]
    views = arena.per_parameter()  # adjacent column slices of one matrix: one launch on Triton
    K = mtl_fast.gram(views, backend=backend.dispatch)
    assert_within_rule(K, truth, ref_K, FP32, is_reference=backend.is_reference)
    separate = [b.clone() for b in views]  # separate blocks: one launch per block
    separate[0] = views[0].transpose(1, 2).clone().transpose(1, 2)  # a column-major block
    K2 = mtl_fast.gram(separate, backend=backend.dispatch)
    assert_within_rule(K2, truth, ref_K, FP32, is_reference=backend.is_reference)


# ------------------------------------------------------------- bad input (before dispatch)


def test_gram_of_empty_parameters_is_zero() -> None:
    K = mtl_fast.gram(torch.zeros(3, 0))
    assert torch.equal(K, torch.zeros(3, 3))


def test_gram_rejects_wrong_rank_dtype_and_type() -> None:
    with pytest.raises(ValueError, match=r"J must have shape \(\.\.\., T, P\), got \(5,\)"):
        mtl_fast.gram(torch.zeros(5))
    with pytest.raises(TypeError, match="J must have dtype"):
        mtl_fast.gram(torch.zeros(2, 3, dtype=torch.int32))
    with pytest.raises(TypeError, match=r"J must be a torch\.Tensor"):
        mtl_fast.gram("not a tensor")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one task"):
        mtl_fast.gram(torch.zeros(0, 3))


def test_gram_list_rejects_mismatches() -> None:
    with pytest.raises(ValueError, match="empty list"):
        mtl_fast.gram([])
    with pytest.raises(ValueError, match=r"J\[1\] has 2 tasks in dim 0, but J\[0\] has 3"):
        mtl_fast.gram([torch.zeros(3, 4), torch.zeros(2, 4)])
    with pytest.raises(TypeError, match=r"J\[1\] has dtype torch.float64"):
        mtl_fast.gram([torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64)])
    with pytest.raises(ValueError, match=r"J\[1\] is on meta"):
        mtl_fast.gram([torch.zeros(3, 4), torch.zeros(3, 4, device="meta")])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_gradients_name_the_tasks(bad: float) -> None:
    J = torch.randn(4, 10)
    J[1, 3] = bad
    J[3, 0] = bad
    with pytest.raises(mtl_fast.NonFiniteError, match=r"task\(s\) \[1, 3\]") as info:
        mtl_fast.gram(J)
    assert info.value.tasks == [1, 3]
    K = mtl_fast.gram(J, check_finite=False)  # opting out returns the raw (non-finite) Gram
    assert not torch.isfinite(K).all()
    with pytest.raises(mtl_fast.NonFiniteError, match=r"Gram matrix K is not finite .* \[1, 3\]"):
        mtl_fast.min_norm(K)


# ------------------------------------------------------------------------ backend-specific

PLAN_CASES = [(1, 1, 1, 4), (1, 2, 7, 4), (2, 5, 4099, 1), (2, 5, 4099, 16), (1, 17, 333, 4)]
PLAN_CASES += [(1, 33, 1025, 4), (1, 65, 100, 2)]


@for_backends(
    "gram",
    "dtype, B, T, P, sms",
    every_dtype(PLAN_CASES),
    only=["cuda-emulated"],
)
def test_emulated_gram_chunk_plans(backend, dtype, B, T, P, sms) -> None:
    """cuda-emulated only: the extension plans its chunks for the device's SM count. Plans for
    few long chunks (1 SM) and many short ones (16 SMs), and for 3·sms + 1, sum to rounding."""
    J = torch.randn(B, T, P, generator=torch.Generator().manual_seed(T * P)).to(dtype)
    truth, ref_K = gram_truth(J), ref.gram(J)
    for plan in (sms, 3 * sms + 1):
        K = backend.module.gram_planned(J, plan)
        assert torch.equal(K, K.transpose(-1, -2))
        assert_within_rule(K, truth, ref_K, dtype)


@for_backends("gram", only=["triton"])
def test_triton_fp32_gram_is_tf32x3_or_ieee_never_tf32(backend) -> None:
    """triton only: fp32 J with T > 8 goes through tl.dot with three TF32 products per term
    (or exact FMAs with MTL_FAST_GRAM_FP32_PRECISION=ieee), never one-pass TF32; fp64 and the
    per-thread path (T ≤ 8) are "ieee". The grid above holds the result to the fp32 rule."""
    triton_gram = importlib.import_module("mtl_fast.kernels.triton.gram")  # the file, not the op
    assert triton_gram.FP32_PRECISION in ("tf32x3", "ieee")
    for T in [*TASKS, 65, 130]:
        plan = triton_gram._Plan(T, FP32)
        assert plan.precision == (triton_gram.FP32_PRECISION if plan.use_dot else "ieee"), T
        assert plan.use_dot == (T > 8), T
        assert triton_gram._Plan(T, FP64).precision == "ieee"
        assert triton_gram._Plan(T, BF16).precision == "ieee"


@gpu
@requires_gpu
@for_backends("gram", only=["triton", "cuda"])
def test_gram_bitwise_deterministic_with_many_splits(backend) -> None:
    """GPU only: split-K over many SMs, reduced in a fixed order (no atomics)."""
    J = backend.to(torch.randn(8, 10_000_019, dtype=BF16))
    gram = mtl_fast.gram
    runs = [gram(J, backend=backend.dispatch) for _ in range(3)]
    assert all(torch.equal(runs[0], r) for r in runs[1:])
    K = torch.stack([conflicting_gram(16, torch.Generator().manual_seed(i)) for i in range(64)])
    K = backend.to(K.float())
    w = [mtl_fast.min_norm(K, backend=backend.dispatch) for _ in range(2)]
    assert torch.equal(w[0], w[1])


@gpu
@requires_gpu
@pytest.mark.slow
@for_backends("gram", only=["triton", "cuda"])
def test_gram_and_combine_beyond_32_bit_offsets(backend) -> None:
    """GPU only: T·P > 2³¹ elements (6.4 GB in bf16; P > 2³⁰, so the whole last row lies past
    2³¹) need 64-bit offsets."""
    T, P = 3, 2**30 + 4099
    free, _ = torch.cuda.mem_get_info()
    if free < 3 * T * P * 2:
        pytest.skip(f"needs ≈ {3 * T * P * 2 / 2**30:.0f} GiB of free GPU memory")
    J = torch.empty(1, T, P, dtype=BF16, device=backend.device)
    J.normal_(generator=torch.Generator(device=backend.device).manual_seed(0))
    K = backend.op("gram")(J)
    # The truth, chunked so that no single matmul needs 64-bit offsets.
    truth = torch.zeros(T, T, dtype=FP64, device=backend.device)
    for start in range(0, P, 1 << 26):
        c = J[0, :, start : start + (1 << 26)].double()
        truth += c @ c.T
    assert relative_error(K[0].cpu(), truth.cpu()) <= 1e-5
    if "combine" in backend.info.ops:
        w = torch.tensor([[0.2, 0.3, 0.5]], device=backend.device)
        d = backend.op("combine")(J, w)
        tail = J[0, :, -1000:].float()
        torch.testing.assert_close(d[0, -1000:].float(), w[0] @ tail, rtol=1e-2, atol=1e-2)
