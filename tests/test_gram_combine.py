"""gram and combine against float64 truth: flat and per-parameter input, odd sizes, dtypes."""

from __future__ import annotations

import pytest
import torch

import mtl_fast

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# Relative error allowed against the fp64 truth of the dtype-rounded input (fp32 accumulation).
TOL = {torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float64: 1e-12}


def rel_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    return ((x.double() - truth).abs().max() / truth.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("P", [1, 7, 1000, 65537])
@pytest.mark.parametrize("T", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_matches_fp64(T: int, P: int, dtype: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(T * 1000 + P)
    J = torch.randn(T, P, generator=gen).to(dtype)
    truth = J.double() @ J.double().T
    K = mtl_fast.gram(J.to(device)).cpu()
    assert K.shape == (T, T)
    assert K.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert rel_err(K, truth) <= TOL[dtype]
    assert torch.equal(K, K.T), "Gram must be exactly symmetric"
    eig = torch.linalg.eigvalsh(K.double())
    assert eig.min() >= -1e-5 * eig.max().abs().clamp_min(1e-30), "Gram must be PSD"


@pytest.mark.parametrize("dtype", DTYPES)
def test_gram_per_parameter_list_equals_flat(dtype: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    T = 5
    shapes = [(7,), (3, 4), (1,), (2, 3, 5), (65537,)]
    blocks = [torch.randn(T, *s, generator=gen).to(dtype) for s in shapes]
    flat = torch.cat([b.reshape(T, -1) for b in blocks], dim=1)
    truth = flat.double() @ flat.double().T
    K_list = mtl_fast.gram([b.to(device) for b in blocks]).cpu()
    assert rel_err(K_list, truth) <= TOL[dtype]
    assert torch.equal(K_list, K_list.T)


def test_gram_batched_leading_dims() -> None:
    gen = torch.Generator().manual_seed(1)
    J = torch.randn(2, 3, 4, 17, generator=gen, dtype=torch.float64)
    K = mtl_fast.gram(J)
    assert K.shape == (2, 3, 4, 4)
    torch.testing.assert_close(K, J @ J.transpose(-1, -2))


def test_gram_strided_rows() -> None:
    gen = torch.Generator().manual_seed(2)
    big = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    J = big[::2, 5:35]  # non-contiguous rows
    torch.testing.assert_close(mtl_fast.gram(J), J @ J.T)


def test_gram_of_empty_parameters_is_zero() -> None:
    K = mtl_fast.gram(torch.zeros(3, 0))
    assert torch.equal(K, torch.zeros(3, 3))


@pytest.mark.parametrize("P", [1, 7, 1000, 65537])
@pytest.mark.parametrize("dtype", DTYPES)
def test_combine_matches_fp64(P: int, dtype: torch.dtype, device: torch.device) -> None:
    gen = torch.Generator().manual_seed(P)
    T = 5
    J = torch.randn(T, P, generator=gen).to(dtype)
    w = torch.rand(T, generator=gen)
    truth = w.double() @ J.double()
    d = mtl_fast.combine(J.to(device), w.to(device)).cpu()
    assert d.shape == (P,) and d.dtype == dtype
    half_ulp = torch.finfo(dtype).eps / 2 if dtype in (torch.float16, torch.bfloat16) else 0.0
    assert rel_err(d, truth) <= TOL[dtype] + half_ulp


def test_combine_is_linear_and_batched() -> None:
    gen = torch.Generator().manual_seed(3)
    J = torch.randn(2, 4, 9, generator=gen, dtype=torch.float64)
    w = torch.rand(2, 4, generator=gen, dtype=torch.float64)
    d = mtl_fast.combine(J, w)
    torch.testing.assert_close(d, torch.einsum("bt,btp->bp", w, J))
    # One-hot weights select a row exactly.
    onehot = torch.zeros(2, 4, dtype=torch.float64)
    onehot[:, 2] = 1
    assert torch.equal(mtl_fast.combine(J, onehot), J[:, 2])


def test_mgda_direction_is_min_norm_point() -> None:
    """combine(J, min_norm(gram(J))) is the min-norm point of the hull of the gradients: its
    inner product with every task gradient is at least its squared norm."""
    gen = torch.Generator().manual_seed(4)
    J = torch.randn(6, 50, generator=gen, dtype=torch.float64)
    w = mtl_fast.min_norm(mtl_fast.gram(J), tol=1e-12)
    d = mtl_fast.combine(J, w)
    assert ((J @ d) >= d @ d - 1e-9).all()
