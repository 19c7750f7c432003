"""The CUDA kernels' own device code, run on the CPU and compared with the references.

``csrc/gram_kernel.cuh`` and ``csrc/min_norm_kernel.cuh`` hold the device code of the Gram,
sign-conflict and min-norm kernels free of ATen; ``csrc/emulate/`` compiles that very code with
the host C++ compiler against a small CUDA emulator (one std::thread per CUDA thread, barriers
for __syncthreads and for every warp shuffle/ballot) and launches it with the same plan as the
extension. This checks the kernels' logic — tiling, pair decoding, chunk reduction, warp
reductions, the solver step for step — on a machine without a GPU. It does not check timing, the
GPU memory model or the host launch code (tests/test_cuda_ops.py does, on a GPU).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mtl_fast import reference as ref
from mtl_fast import verify

CSRC = Path(__file__).resolve().parents[1] / "csrc"
_CXX = shutil.which("g++") or shutil.which("c++")

pytestmark = pytest.mark.skipif(_CXX is None, reason="needs a host C++20 compiler (g++)")

i64, vp = ctypes.c_int64, ctypes.c_void_p


def _compile(name: str, out_dir: Path) -> ctypes.CDLL:
    assert _CXX is not None
    lib = out_dir / f"{name}.so"
    cmd = [_CXX, "-std=c++20", "-O2", "-fPIC", "-shared", "-pthread", "-o", str(lib)]
    subprocess.run([*cmd, str(CSRC / "emulate" / f"{name}.cpp")], check=True, timeout=300)
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module")
def gram_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return _compile("gram_host", tmp_path_factory.mktemp("emulated"))


@pytest.fixture(scope="module")
def min_norm_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return _compile("min_norm_host", tmp_path_factory.mktemp("emulated"))


def _gram(
    lib: ctypes.CDLL, J: torch.Tensor, sms: int, K: torch.Tensor | None = None
) -> torch.Tensor:
    B, T, P = J.shape
    out = K if K is not None else torch.empty(B, T, T, dtype=J.dtype)
    fn = (
        lib.mtl_fast_gram_emulated_f64
        if J.dtype == torch.float64
        else lib.mtl_fast_gram_emulated_f32
    )
    fn.argtypes = [vp, vp, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    fn(J.data_ptr(), out.data_ptr(), B, T, P, sms, int(K is not None))
    return out


def _sign_conflict(lib: ctypes.CDLL, J: torch.Tensor, sms: int) -> torch.Tensor:
    B, T, P = J.shape
    out = torch.empty(B, T, T, dtype=torch.float64)
    fn = (
        lib.mtl_fast_sign_conflict_emulated_f64
        if J.dtype == torch.float64
        else lib.mtl_fast_sign_conflict_emulated_f32
    )
    fn.argtypes = [vp, vp, i64, i64, i64, ctypes.c_int]
    fn(J.data_ptr(), out.data_ptr(), B, T, P, sms)
    return out


def _min_norm(lib: ctypes.CDLL, K: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
    K = K.contiguous()
    B, T, _ = K.shape
    W = torch.empty(B, T, dtype=K.dtype)
    fn = (
        lib.mtl_fast_min_norm_emulated_f64
        if K.dtype == torch.float64
        else lib.mtl_fast_min_norm_emulated_f32
    )
    fn.argtypes = [vp, vp, i64, ctypes.c_int, i64, ctypes.c_double]
    fn(K.data_ptr(), W.data_ptr(), B, T, max_iter, tol)
    return W


def _rel(x: torch.Tensor, truth: torch.Tensor) -> float:
    scale = truth.abs().max().item()
    err = (x.double() - truth).abs().max().item()
    return err / scale if scale > 0 else err


ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}

# Tile configurations 16×16 (T ≤ 16), 32×32 (T ≤ 32) and 64×64 with several tiles (T > 64);
# sms=1 gives few long chunks, sms=16 many short ones.
GRAM_CASES = [(1, 1, 1, 4), (1, 2, 7, 4), (2, 5, 4099, 1), (2, 5, 4099, 16), (1, 17, 333, 4)]
GRAM_CASES += [(1, 33, 1025, 4), (1, 65, 100, 2)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,T,P,sms", GRAM_CASES)
def test_gram_kernel_code_matches_reference(
    gram_lib: ctypes.CDLL, B: int, T: int, P: int, sms: int, dtype: torch.dtype
) -> None:
    J = torch.randn(B, T, P, generator=torch.Generator().manual_seed(T * P), dtype=dtype)
    truth = J.double() @ J.double().transpose(-1, -2)
    K = _gram(gram_lib, J, sms)
    assert torch.equal(K, K.transpose(-1, -2))
    assert _rel(K, truth) <= 2 * _rel(ref.gram(J), truth) + ATOL[dtype]
    # Plans differ in chunking only: the sums agree to rounding.
    assert (
        _rel(_gram(gram_lib, J, 3 * sms + 1), truth) <= 2 * _rel(ref.gram(J), truth) + ATOL[dtype]
    )


def test_gram_accumulates_blocks_like_gram_list(gram_lib: ctypes.CDLL) -> None:
    gen = torch.Generator().manual_seed(7)
    blocks = [torch.randn(1, 6, n, generator=gen, dtype=torch.float64) for n in (5, 300, 1)]
    K = torch.zeros(1, 6, 6, dtype=torch.float64)
    for block in blocks:
        _gram(gram_lib, block, 4, K=K)
    truth = ref.gram_list([b[0] for b in blocks])
    assert _rel(K[0], truth) <= 1e-13


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,T,P,sms", [(1, 1, 1, 4), (2, 5, 4099, 16), (1, 33, 1025, 4)])
def test_sign_conflict_kernel_code_counts_exactly(
    gram_lib: ctypes.CDLL, B: int, T: int, P: int, sms: int, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(P)
    J = torch.randn(B, T, P, generator=gen, dtype=dtype)
    J[torch.rand(B, T, P, generator=gen) < 0.2] = 0.0
    if dtype == torch.float64:
        J[..., :2] = 1e-300 * torch.sign(J[..., :2])  # fp32 would flush these to zero
    C = _sign_conflict(gram_lib, J, sms)
    assert torch.equal(C, ref.sign_conflict(J))


MIN_NORM_CASES = [(1, torch.float64), (2, torch.float64), (3, torch.float64), (5, torch.float32)]
MIN_NORM_CASES += [
    (8, torch.float64),
    (17, torch.float32),
    (33, torch.float64),
    (40, torch.float64),
]


@pytest.mark.parametrize("T,dtype", MIN_NORM_CASES)
def test_min_norm_kernel_code_follows_the_reference(
    min_norm_lib: ctypes.CDLL, T: int, dtype: torch.dtype
) -> None:
    """Generic, near-rank-1 conflicting, zero and duplicated Grams: the kernel's weights are the
    reference's (same algorithm, same stopping rule) and reach the fp64 optimum."""
    samples = verify.gram_samples(T, torch.Generator().manual_seed(T))
    Kd = torch.stack(list(samples.values()))
    K = Kd.to(dtype)
    w = _min_norm(min_norm_lib, K, max_iter=1000, tol=1e-7)
    assert w.dtype == dtype and torch.isfinite(w).all()
    w = w.double()
    assert (w >= 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(len(samples), dtype=torch.float64), atol=1e-6)
    w_ref = ref.min_norm(K, max_iter=1000, tol=1e-7, sync_free=False).double()
    assert (w - w_ref).abs().max().item() <= 1e-6, dict(zip(samples, (w - w_ref).abs().amax(-1)))
    w_star = ref.min_norm(Kd, max_iter=1000, tol=1e-12, sync_free=False)
    f = torch.einsum("bi,bij,bj->b", w, Kd, w)
    f_star = torch.einsum("bi,bij,bj->b", w_star, Kd, w_star)
    scale = Kd.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-300)
    assert ((f - f_star) / scale).max().item() <= verify.MIN_NORM_TOL


def test_min_norm_kernel_code_zero_iterations_and_scale(min_norm_lib: ctypes.CDLL) -> None:
    K = torch.diag(torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)).unsqueeze(0)
    assert torch.equal(
        _min_norm(min_norm_lib, K, 0, 1e-7), torch.tensor([[0.0, 1.0, 0.0]]).double()
    )
    J = torch.randn(3, 6, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    G = J @ J.transpose(-1, -2)
    base = _min_norm(min_norm_lib, G, 500, 1e-10)
    for scale in (1e-30, 1e30):
        assert torch.allclose(_min_norm(min_norm_lib, G * scale, 500, 1e-10), base, atol=1e-6)
