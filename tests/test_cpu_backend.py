"""The compiled CPU min-norm solver (backend "cpu"): the reference's answers, its guarantees,
torch.compile, the dispatch, and the fallback when the library is not built."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import mtl_fast
from mtl_fast._core import dispatch as _dispatch
from mtl_fast.kernels import cpu
from mtl_fast.kernels import reference as ref
from mtl_fast.kernels.cpu import loader
from mtl_fast.tools import verify
from tests.backends import assert_abi_version, assert_one_graph, cpu_library_at
from tests.helpers import (
    assert_kkt,
    assert_on_simplex,
    conflicting_gram,
    objective,
    psd_with_rank,
)
from tests.ops.test_min_norm import kinds, qp_oracle

needs_library = pytest.mark.skipif(
    cpu.unavailable_reason() is not None,
    reason=f"the CPU solver is not built: {cpu.unavailable_reason()}",
)

SIZES = [1, 2, 3, 5, 8, 16, 32, 64]
# Kinds whose minimiser is unique: there the weights themselves must be the reference's.
UNIQUE = ("full-rank", "conflicting")


def solve(K: torch.Tensor, max_iter: int = 256, tol: float = 1e-6) -> torch.Tensor:
    return cpu.min_norm(K, max_iter=max_iter, tol=tol, sync_free=False)


def reference(K: torch.Tensor, max_iter: int = 256, tol: float = 1e-6) -> torch.Tensor:
    return ref.min_norm(K, max_iter=max_iter, tol=tol, sync_free=False)


@needs_library
@pytest.mark.parametrize("T", SIZES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_follows_the_reference_and_reaches_the_optimum(T: int, dtype: torch.dtype) -> None:
    """The reference's problem sets: weights equal to the reference's where the minimiser is
    unique, the objective within tolerance of it and of a QP oracle everywhere, KKT."""
    gen = torch.Generator().manual_seed(T)
    for name, Kd in kinds(T, gen).items():
        K = Kd.to(dtype)[None]
        w = solve(K, max_iter=2000, tol=1e-10)
        w_ref = reference(K, max_iter=2000, tol=1e-10)
        assert w.dtype == dtype and w.shape == (1, T)
        assert_on_simplex(w, atol=1e-12 if dtype == torch.float64 else 1e-6)
        if name in UNIQUE:
            atol = 1e-9 if dtype == torch.float64 else 1e-6
            torch.testing.assert_close(w, w_ref, atol=atol, rtol=0, msg=name)
        scale = max(Kd.diagonal().max().item(), 1e-300)
        f, f_ref = objective(Kd, w[0]).item(), objective(Kd, w_ref[0]).item()
        assert f <= f_ref + 1e-9 * scale, f"{name}: {f} vs reference {f_ref}"
        if dtype == torch.float64:
            assert f <= qp_oracle(Kd) + 1e-6 * scale, name
            assert_kkt(Kd, w[0], tol=1e-6)


@needs_library
@pytest.mark.parametrize("T", [5, 16, 40])
def test_same_iterates_as_the_reference(T: int) -> None:
    """Same algorithm, step for step: after every iteration budget k the weights agree."""
    gen = torch.Generator().manual_seed(10 + T)
    K = torch.stack([psd_with_rank(T, T, gen), conflicting_gram(T, gen)])
    for k in (k for k in (0, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89) if k < 3 * T):
        torch.testing.assert_close(solve(K, k, 0.0), reference(K, k, 0.0), atol=1e-10, rtol=0)
    # No iteration at all: the vertex with the smallest diagonal entry (the first on ties).
    D = torch.diag(torch.tensor([3.0, 1.0, 2.0, 1.0], dtype=torch.float64))[None]
    assert solve(D, 0).tolist() == [[0.0, 1.0, 0.0, 0.0]]


@needs_library
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e-12, 1e-6, 1.0, 1e6, 1e12, 1e30])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scale_invariant_like_the_reference(scale: float, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(7)
    for T in (2, 5, 16, 17):
        K = psd_with_rank(T, T, gen)[None]
        Ks = (K * scale).to(dtype)
        ws = solve(Ks, tol=1e-10)
        assert_on_simplex(ws, atol=1e-5)
        torch.testing.assert_close(ws, reference(Ks, tol=1e-10), atol=1e-12, rtol=0)
        if scale != 0.0:  # K = 0: every point of the simplex is optimal
            atol = 1e-9 if dtype == torch.float64 else 2e-3
            torch.testing.assert_close(ws, solve(K.to(dtype), tol=1e-10), atol=atol, rtol=0)


@needs_library
@pytest.mark.parametrize("T", [2, 8, 40, 64])
def test_verify_samples_like_the_cuda_kernel(T: int) -> None:
    """The problem set the CUDA kernel's device code is held to (tests/test_cuda_emulated.py):
    weights within 1e-6 of the reference's, objective within verify.MIN_NORM_TOL of the
    optimum, in fp32 and fp64."""
    samples = verify.gram_samples(T, torch.Generator().manual_seed(T))
    Kd = torch.stack(list(samples.values()))
    w_star = reference(Kd, max_iter=1000, tol=1e-12)
    f_star = objective(Kd, w_star)
    scale = Kd.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)
    for dtype in (torch.float32, torch.float64):
        K = Kd.to(dtype)
        w = solve(K, max_iter=1000, tol=1e-7)
        assert (w.double() - reference(K, 1000, 1e-7).double()).abs().max().item() <= 1e-6
        assert ((objective(Kd, w) - f_star) / scale).max().item() <= verify.MIN_NORM_TOL


@needs_library
def test_batches_solve_each_problem_on_its_own() -> None:
    gen = torch.Generator().manual_seed(3)
    T = 8
    Ks = torch.stack([*kinds(T, gen).values(), *kinds(T, gen).values()])
    batched = mtl_fast.min_norm(Ks.reshape(2, -1, T, T), backend="cpu", tol=1e-10)
    assert batched.shape == (2, len(Ks) // 2, T)
    singles = torch.stack([solve(K[None], tol=1e-10)[0] for K in Ks])
    assert torch.equal(batched.reshape(-1, T), singles)
    torch.testing.assert_close(singles, reference(Ks, tol=1e-10), atol=1e-9, rtol=0)


@needs_library
def test_public_op_cases() -> None:
    """Closed forms, T = 1, a non-contiguous K and half precision through mtl_fast.min_norm."""
    opposite = torch.tensor([[4.0, -4.0], [-4.0, 4.0]], dtype=torch.float64)
    assert mtl_fast.min_norm(opposite, backend="cpu").tolist() == [0.5, 0.5]
    K = torch.tensor([[2.0, 1.998], [1.998, 1.996]], dtype=torch.float64)
    assert mtl_fast.min_norm(K, backend="cpu", tol=1e-14).tolist() == [0.0, 1.0]
    assert solve(torch.tensor([[[3.0]]])).tolist() == [[1.0]]
    gen = torch.Generator().manual_seed(5)
    J = torch.randn(6, 20, generator=gen, dtype=torch.float64)
    K = torch.stack([J @ J.T, -(J @ J.T)], dim=-1)[..., 0]  # a strided view, not contiguous
    assert not K.is_contiguous()
    torch.testing.assert_close(
        mtl_fast.min_norm(K, backend="cpu"), mtl_fast.min_norm(K.contiguous(), backend="reference")
    )
    w = mtl_fast.min_norm((J @ J.T).to(torch.bfloat16), backend="cpu")
    assert w.dtype == torch.float32
    assert_on_simplex(w)


@needs_library
def test_large_T() -> None:
    gen = torch.Generator().manual_seed(11)
    K = psd_with_rank(128, 128, gen)[None]
    torch.testing.assert_close(solve(K, tol=1e-9), reference(K, tol=1e-9), atol=1e-9, rtol=0)
    with pytest.raises(mtl_fast.BackendUnavailableError, match="T ≤ 4096"):
        mtl_fast.min_norm(torch.zeros(1, 4097, 4097), backend="cpu", check_finite=False)


@needs_library
def test_library_rejects_bad_arguments() -> None:
    loaded = loader.library()
    assert not isinstance(loaded, str)
    f64 = loaded[0]
    K, W = torch.eye(3, dtype=torch.float64)[None], torch.empty(1, 3, dtype=torch.float64)
    assert f64(K.data_ptr(), W.data_ptr(), 1, 3, 10, 1e-6) == 0
    for batch, T, max_iter in ((-1, 3, 10), (1, 0, 10), (1, 3, -1), (1, 4097, 10)):
        assert f64(K.data_ptr(), W.data_ptr(), batch, T, max_iter, 1e-6) == 1
    assert f64(None, None, 1, 3, 10, 1e-6) == 1
    assert f64(None, None, 0, 3, 10, 1e-6) == 0  # an empty batch reads nothing


@needs_library
def test_auto_prefers_cpu_for_min_norm_on_cpu_tensors_only() -> None:
    cpu_device = torch.device("cpu")
    assert _dispatch.resolve_name("min_norm", "auto", cpu_device) == "cpu"
    assert _dispatch.resolve_name("gram", "auto", cpu_device) == "cpu"
    assert _dispatch.resolve_name("combine", "auto", cpu_device) == "cpu"
    assert _dispatch.resolve_name("gram_list", "auto", cpu_device) == "reference"
    # On a CUDA device (resolution only; nothing runs there) the CPU solver is never chosen.
    assert _dispatch.resolve_name("min_norm", "auto", torch.device("cuda")) != "cpu"
    assert "CPU tensors only" in (cpu.device_reason(torch.device("cuda")) or "")
    with pytest.raises(mtl_fast.BackendUnavailableError, match="no implementation of gram_list"):
        mtl_fast.gram([torch.randn(2, 3)], backend="cpu")


@needs_library
def test_custom_op_schema_and_fake() -> None:
    gen = torch.Generator().manual_seed(2)
    for dtype in (torch.float32, torch.float64):
        K = torch.stack([psd_with_rank(6, 6, gen), conflicting_gram(6, gen)]).to(dtype)
        torch.library.opcheck(torch.ops.mtl_fast_cpu.min_norm.default, (K, 50, 1e-8))
        K.requires_grad_()
        torch.library.opcheck(torch.ops.mtl_fast_cpu.min_norm.default, (K, 50, 1e-8))


@needs_library
def test_weights_are_a_constant_for_autograd_eager_and_compiled() -> None:
    """No gradient flows through the weights, whether the op runs eagerly or compiled."""
    gen = torch.Generator().manual_seed(6)
    J = torch.randn(4, 9, generator=gen, dtype=torch.float64)

    def loss(J: torch.Tensor) -> torch.Tensor:
        w = mtl_fast.min_norm(J @ J.T)
        assert not w.requires_grad
        return (w @ J).square().sum()

    grads = []
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        torch._dynamo.reset()
        Jg = J.clone().requires_grad_()
        fn(Jg).backward()
        grads.append(Jg.grad)
    torch._dynamo.reset()
    w = mtl_fast.min_norm(J @ J.T)
    torch.testing.assert_close(grads[0], 2 * w[:, None] * (w @ J)[None, :])
    torch.testing.assert_close(grads[1], grads[0])


@needs_library
@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
def test_gram_min_norm_combine_compile_as_one_graph(compiler: str) -> None:
    """The public ops with their defaults inside torch.compile(fullgraph=True) on CPU tensors:
    no graph break and no host read, also when no backend was loaded before tracing."""
    gen = torch.Generator().manual_seed(4)
    J = torch.randn(5, 30, generator=gen, dtype=torch.float64)

    def step(J: torch.Tensor) -> torch.Tensor:
        w = mtl_fast.min_norm(mtl_fast.gram(J))
        return mtl_fast.combine(J, w)

    expected = step(J)
    for warm in (False, True):
        if not warm:
            _dispatch._reset_cache()
        assert_one_graph(step, J, expected, "mtl_fast_cpu.min_norm", compiler)
    # An explicit backend resolves the same way.
    torch._dynamo.reset()
    solve = torch.compile(lambda K: mtl_fast.min_norm(K, backend="cpu"), fullgraph=True)
    K = J @ J.T
    torch.testing.assert_close(solve(K), mtl_fast.min_norm(K, backend="cpu"))
    torch._dynamo.reset()


@pytest.fixture
def no_library(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The state of an install without a C++ compiler: no library next to the package."""
    with cpu_library_at(monkeypatch, None):
        yield


@pytest.mark.usefixtures("no_library")
def test_without_the_library_auto_falls_back_and_backends_says_why() -> None:
    status = mtl_fast.backends()["cpu"]
    assert not status.available
    assert "not built" in (status.reason or "") and "C++17 compiler" in (status.reason or "")
    assert _dispatch.resolve_name("min_norm", "auto", torch.device("cpu")) == "reference"
    K = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert mtl_fast.min_norm(K).tolist() == [0.5, 0.5]
    with pytest.raises(mtl_fast.BackendUnavailableError, match=r"backend='cpu'.*not built"):
        mtl_fast.min_norm(K, backend="cpu")


def test_a_file_that_is_not_the_library_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    junk = tmp_path / "_lib.so"
    junk.write_bytes(b"not a shared library")
    with cpu_library_at(monkeypatch, junk):
        reason = cpu.unavailable_reason()
        assert reason is not None and "cannot be loaded" in reason and str(junk) in reason


def test_abi_version_matches_the_header() -> None:
    assert_abi_version(
        "min_norm.h", "MTL_MIN_NORM_ABI_VERSION", "mtl_min_norm_abi_version", cpu.ABI_VERSION
    )
