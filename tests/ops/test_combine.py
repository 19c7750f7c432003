"""combine d = Σ_t w_t J_t on every backend: against the float64 truth, strided, batched, exact
selections, reproducible. (T·P > 2³¹ on a GPU: tests/ops/test_gram.py.)"""

from __future__ import annotations

import pytest
import torch

import mtl_fast
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast.kernels import reference as ref
from tests.backends import for_backends, for_batched_shapes
from tests.helpers import DTYPES, FP32, FP64, assert_within_rule

TASKS = [1, 2, 3, 5, 8, 17, 40, 64]
COLUMNS = [1, 7, 1000, 65537]

GRID = [(d, T, P) for d in DTYPES for T in TASKS for P in COLUMNS]
# One host thread per CUDA thread (the kernel is launched on 3 blocks, so its grid-stride loop
# wraps): the full grid runs on the reference and on a GPU.
GRID_EMULATED = [(d, T, P) for d in DTYPES for T, P in [(1, 1), (3, 1000), (17, 333), (64, 7)]]


def truth_of(J: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.einsum("...t,...tp->...p", w.cpu().double(), J.cpu().double())


@for_backends("combine", "dtype, T, P", GRID, emulator=GRID_EMULATED)
def test_combine_matches_fp64(backend, dtype, T, P) -> None:
    gen = torch.Generator().manual_seed(T + P)
    J = torch.randn(2, T, P, generator=gen).to(dtype)
    w = torch.rand(2, T, generator=gen).to(accumulation_dtype(dtype))
    d = backend.op("combine")(backend.to(J), backend.to(w)).cpu()
    assert d.dtype == dtype and d.shape == (2, P)
    assert_within_rule(
        d, truth_of(J, w), ref.combine(J, w), dtype, dtype, is_reference=backend.is_reference
    )


SHAPES = [(1, 1, 1), (1, 2, 7), (1, 3, 1000), (2, 5, 4099), (1, 16, 333)]
SHAPES += [(1, 17, 333), (3, 32, 1000), (1, 33, 1025), (2, 64, 129), (1, 65, 100)]


@for_batched_shapes("combine", SHAPES, [(2, 3, 1000), (1, 65, 100)])
def test_combine_batched_matches_fp64(backend, dtype, B, T, P) -> None:
    """Several problems, weights on the simplex (as min_norm gives them), tile edges."""
    gen = torch.Generator().manual_seed(T * 7 + P)
    J = torch.randn(B, T, P, generator=gen).to(dtype)
    w = torch.rand(B, T, generator=gen)
    w = (w / w.sum(-1, keepdim=True)).to(accumulation_dtype(dtype))
    d = backend.op("combine")(backend.to(J), backend.to(w)).cpu()
    assert d.dtype == dtype and d.shape == (B, P)
    assert_within_rule(
        d, truth_of(J, w), ref.combine(J, w), dtype, dtype, is_reference=backend.is_reference
    )


@for_backends("combine", "dtype, P", [(d, P) for d in DTYPES for P in COLUMNS])
def test_combine_of_one_problem(backend, dtype, P) -> None:
    """The public op on (T, P) J and (T,) w: the un-batched layout, any float dtype of w."""
    gen = torch.Generator().manual_seed(P)
    J = torch.randn(5, P, generator=gen).to(dtype)
    w = torch.rand(5, generator=gen)
    d = mtl_fast.combine(backend.to(J), backend.to(w), backend=backend.dispatch).cpu()
    assert d.shape == (P,) and d.dtype == dtype
    ref_d = ref.combine(J[None], w[None].to(accumulation_dtype(dtype)))[0]
    assert_within_rule(d, truth_of(J, w), ref_d, dtype, dtype, is_reference=backend.is_reference)


@for_backends("combine")
def test_combine_strided(backend) -> None:
    J = backend.to(torch.randn(4, 9, 301))[:, ::3, 1:300]
    w = backend.to(torch.rand(4, 6))[:, ::2]
    d = mtl_fast.combine(J, w, backend=backend.dispatch)
    ref_d = ref.combine(J.cpu(), w.cpu())
    assert_within_rule(d, truth_of(J, w), ref_d, FP32, is_reference=backend.is_reference)


@for_backends("combine")
def test_combine_is_linear_and_batched(backend) -> None:
    gen = torch.Generator().manual_seed(3)
    J = backend.to(torch.randn(2, 4, 9, generator=gen, dtype=FP64))
    w = backend.to(torch.rand(2, 4, generator=gen, dtype=FP64))
    d = mtl_fast.combine(J, w, backend=backend.dispatch)
    torch.testing.assert_close(d.cpu(), truth_of(J, w))
    # One-hot weights select a row exactly.
    onehot = torch.zeros(2, 4, dtype=FP64, device=J.device)
    onehot[:, 2] = 1
    assert torch.equal(mtl_fast.combine(J, onehot, backend=backend.dispatch), J[:, 2])


@for_backends(
    "combine",
    "B, T, P",
    [(1, 33, 1_000_003)],
    interpreter=[(1, 33, 100_003)],  # the full P on the reference and on a GPU
    emulator=[(1, 33, 10_003)],
)
def test_combine_is_reproducible(backend, B, T, P) -> None:
    J = backend.to(torch.randn(B, T, P))
    w = backend.to(torch.rand(B, T))
    combine = backend.op("combine")
    assert torch.equal(combine(J, w), combine(J, w))


def test_combine_of_no_columns_is_empty() -> None:
    d = mtl_fast.combine(torch.zeros(2, 3, 0), torch.ones(2, 3))
    assert d.shape == (2, 0)


def test_combine_rejects_mismatched_weights() -> None:
    with pytest.raises(ValueError, match=r"w must have shape \(3,\) .* got \(4,\)"):
        mtl_fast.combine(torch.zeros(3, 5), torch.zeros(4))
    with pytest.raises(ValueError, match=r"w must have shape \(2, 3\)"):
        mtl_fast.combine(torch.zeros(2, 3, 5), torch.zeros(3))
    with pytest.raises(ValueError, match="w is on meta but J is on cpu"):
        mtl_fast.combine(torch.zeros(3, 5), torch.zeros(3, device="meta"))
    with pytest.raises(TypeError, match="w must have dtype"):
        mtl_fast.combine(torch.zeros(3, 5), torch.zeros(3, dtype=torch.int64))


def test_combine_refuses_nonfinite_input_on_the_cpu() -> None:
    """NaN/Inf in w (checked directly) or in J (seen in d, then named) is refused, naming the
    tasks; unchecked it propagates to d. Finite values whose sum overflows are not refused."""
    J = torch.ones(3, 5)
    w = torch.ones(3)
    with pytest.raises(mtl_fast.NonFiniteError, match=r"weights w .*\[2\]"):
        mtl_fast.combine(J, torch.tensor([1.0, 1.0, float("inf")]))
    J[1, 3] = float("nan")
    with pytest.raises(mtl_fast.NonFiniteError, match=r"gradient J .*\[1\]"):
        mtl_fast.combine(J, w)
    assert bool(mtl_fast.combine(J, w, check_finite=False)[3].isnan())
    big = torch.full((2, 3), 3e38)
    assert bool(mtl_fast.combine(big, torch.ones(2)).isinf().all())
