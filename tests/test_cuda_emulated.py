"""The CUDA kernels' own device code, run on the CPU and compared with the references.

``csrc/*_kernel.cuh`` hold the device code of every kernel (Gram, sign conflicts, min-norm,
combine, multi-state Adam, combine + Adam) free of ATen; ``csrc/emulate/`` compiles that very code with
the host C++ compiler against a small CUDA emulator (one std::thread per CUDA thread, barriers
for __syncthreads and for every warp shuffle/ballot) and launches it with the same plan as the
extension. This checks the kernels' logic — tiling, pair decoding, chunk reduction, warp
reductions, the solver step for step, the Adam arithmetic — on a machine without a GPU, in fp32
and fp64. It does not check timing, the GPU memory model, the fp16/bf16 instantiations or the
host launch code (tests/test_cuda_ops.py does, on a GPU).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from mtl_fast._core.contracts import AdamHyper, AdamState
from mtl_fast.kernels import reference as ref
from mtl_fast.tools import verify

CSRC = Path(__file__).resolve().parents[1] / "csrc"
_CXX = shutil.which("g++") or shutil.which("c++")

pytestmark = pytest.mark.skipif(_CXX is None, reason="needs a host C++20 compiler (g++)")

i64, vp = ctypes.c_int64, ctypes.c_void_p
_SUFFIX = {
    torch.float64: "f64",
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
}


# c10's fp16/bf16 types are header-only on the host.
TORCH_INCLUDE = f"-I{Path(torch.__file__).resolve().parent / 'include'}"


def _compile(name: str, out_dir: Path) -> ctypes.CDLL:
    assert _CXX is not None
    lib = out_dir / f"{name}.so"
    cmd = [_CXX, "-std=c++20", "-O2", "-fPIC", "-shared", "-pthread", TORCH_INCLUDE]
    cmd += ["-o", str(lib)]
    subprocess.run([*cmd, str(CSRC / "emulate" / f"{name}.cpp")], check=True, timeout=300)
    return ctypes.CDLL(str(lib))


@pytest.fixture(scope="module")
def gram_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return _compile("gram_host", tmp_path_factory.mktemp("emulated"))


@pytest.fixture(scope="module")
def adam_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return _compile("adam_host", tmp_path_factory.mktemp("emulated"))


@pytest.fixture(scope="module")
def min_norm_lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return _compile("min_norm_host", tmp_path_factory.mktemp("emulated"))


def _gram(
    lib: ctypes.CDLL, J: torch.Tensor, sms: int, K: torch.Tensor | None = None
) -> torch.Tensor:
    B, T, P = J.shape
    acc = torch.float64 if J.dtype == torch.float64 else torch.float32
    out = K if K is not None else torch.empty(B, T, T, dtype=acc)
    fn = getattr(lib, f"mtl_fast_gram_emulated_{_SUFFIX[J.dtype]}")
    fn.argtypes = [vp, vp, i64, i64, i64, ctypes.c_int, ctypes.c_int]
    fn(J.data_ptr(), out.data_ptr(), B, T, P, sms, int(K is not None))
    return out


def _sign_conflict(lib: ctypes.CDLL, J: torch.Tensor, sms: int) -> torch.Tensor:
    B, T, P = J.shape
    out = torch.empty(B, T, T, dtype=torch.float64)
    fn = getattr(lib, f"mtl_fast_sign_conflict_emulated_{_SUFFIX[J.dtype]}")
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


ATOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-5, torch.bfloat16: 1e-5}
ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# Tile configurations 16×16 (T ≤ 16), 32×32 (T ≤ 32) and 64×64 with several tiles (T > 64);
# sms=1 gives few long chunks, sms=16 many short ones.
GRAM_CASES = [(1, 1, 1, 4), (1, 2, 7, 4), (2, 5, 4099, 1), (2, 5, 4099, 16), (1, 17, 333, 4)]
GRAM_CASES += [(1, 33, 1025, 4), (1, 65, 100, 2)]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("B,T,P,sms", GRAM_CASES)
def test_gram_kernel_code_matches_reference(
    gram_lib: ctypes.CDLL, B: int, T: int, P: int, sms: int, dtype: torch.dtype
) -> None:
    J = torch.randn(B, T, P, generator=torch.Generator().manual_seed(T * P)).to(dtype)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("B,T,P,sms", [(1, 1, 1, 4), (2, 5, 4099, 16), (1, 33, 1025, 4)])
def test_sign_conflict_kernel_code_counts_exactly(
    gram_lib: ctypes.CDLL, B: int, T: int, P: int, sms: int, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(P)
    J = torch.randn(B, T, P, generator=gen).to(dtype)
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


# ---- combine and Adam ---------------------------------------------------------------------------

dbl = ctypes.c_double


def _ptr(x: torch.Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("B,T,P", [(1, 1, 1), (2, 3, 1000), (1, 17, 333)])
def test_combine_kernel_code_matches_reference(
    adam_lib: ctypes.CDLL, B: int, T: int, P: int, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(P)
    J = torch.randn(B, T, P, generator=gen).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    w = torch.rand(B, T, generator=gen, dtype=acc)
    d = torch.empty(B, P, dtype=dtype)
    fn = getattr(adam_lib, f"mtl_fast_combine_emulated_{_SUFFIX[dtype]}")
    fn.argtypes = [vp, vp, vp, i64, i64, i64]
    fn(J.data_ptr(), w.data_ptr(), d.data_ptr(), B, T, P)
    truth = torch.einsum("bt,btp->bp", w.double(), J.double())
    half_ulp = torch.finfo(dtype).eps / 2 if dtype in (torch.float16, torch.bfloat16) else 0.0
    assert _rel(d, truth) <= 2 * _rel(ref.combine(J, w), truth) + ATOL[dtype] + half_ulp


ADAM_SCHEDULE = [[0], [2], [0, 1, 2, 3], [1], [3, 0], [2], [0, 1, 2, 3], [1, 3]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("lr_is_tensor", [False, True])
@pytest.mark.parametrize("P", [1, 7, 1000])
def test_multi_adam_kernel_code_matches_reference_every_state(
    adam_lib: ctypes.CDLL, P: int, lr_is_tensor: bool, weight_decay: float, dtype: torch.dtype
) -> None:
    fn = (
        adam_lib.mtl_fast_multi_adam_emulated_f64
        if dtype == torch.float64
        else adam_lib.mtl_fast_multi_adam_emulated_f32
    )
    fn.argtypes = [vp] * 8 + [i64, i64, vp, dbl, dbl, dbl, dbl, dbl]
    gen = torch.Generator().manual_seed(P)
    T = 4
    state = [
        torch.randn(P, generator=gen, dtype=dtype),
        torch.zeros(T, P, dtype=dtype),
        torch.zeros(T, P, dtype=dtype),
        torch.zeros(T),
    ]
    ours = [x.clone() for x in state]
    theirs = [x.clone() for x in state]
    lr = torch.tensor(3e-3) if lr_is_tensor else 3e-3
    lr64 = lr.to(torch.float64).reshape(1) if isinstance(lr, torch.Tensor) else None
    for tasks in ADAM_SCHEDULE:
        G = torch.randn(T, P, generator=gen, dtype=dtype)
        idx = torch.tensor(tasks)
        w = torch.rand(len(tasks), generator=gen) + 0.5
        w64 = w.double()  # kept alive while the kernel reads it
        kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=weight_decay)
        ref.multi_adam(AdamState(*theirs), G, idx, idx, w.double(), AdamHyper(lr=lr, **kw))
        fn(
            *(_ptr(x) for x in (ours[0], G, idx, ours[1], ours[2], ours[3], idx, w64)),
            len(tasks),
            P,
            _ptr(lr64),
            0.0 if lr64 is not None else lr,
            0.9,
            0.999,
            1e-8,
            weight_decay,
        )
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for name, a, b in zip(("param", "exp_avg", "exp_avg_sq"), ours, theirs):
        assert _rel(a, b.double()) <= tol, name
    assert torch.equal(ours[3], theirs[3])  # step counts, tasks outside a step untouched


@pytest.mark.parametrize("P", [1, 7, 1000])
def test_combine_adam_kernel_code_matches_reference(adam_lib: ctypes.CDLL, P: int) -> None:
    fn = adam_lib.mtl_fast_combine_adam_emulated_f32
    fn.argtypes = [vp] * 6 + [i64, i64, vp, dbl, dbl, dbl, dbl, dbl]
    gen = torch.Generator().manual_seed(P + 1)
    T = 5
    state = [torch.randn(P, generator=gen), torch.zeros(P), torch.zeros(P), torch.zeros(1)]
    ours = [x.clone() for x in state]
    theirs = [x.clone() for x in state]
    for _ in range(7):
        J = torch.randn(T, P, generator=gen)
        w = torch.rand(T, generator=gen)
        kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
        ref.combine_adam(
            AdamState(theirs[0], theirs[1][None], theirs[2][None], theirs[3]), J, w, AdamHyper(**kw)
        )
        fn(*(_ptr(x) for x in (ours[0], J, w, ours[1], ours[2], ours[3])), T, P, None, 1e-2, 0.9,
           0.999, 1e-8, 0.01)  # fmt: skip
    for name, a, b in zip(("param", "exp_avg", "exp_avg_sq"), ours, theirs):
        assert _rel(a, b.double()) <= 1e-5, name
    assert torch.equal(ours[3], theirs[3])


def test_kernels_have_no_data_race_under_threadsanitizer(tmp_path: Path) -> None:
    """The CPU stand-in for compute-sanitizer's racecheck: every kernel's device code, emulated,
    under ThreadSanitizer. The driver's own check: a missing barrier is reported."""
    assert _CXX is not None
    emu = CSRC / "emulate"
    flags = ["-std=c++20", "-O1", "-g", "-fsanitize=thread", "-pthread", TORCH_INCLUDE]
    probe = tmp_path / "probe.cpp"
    probe.write_text(
        f'#include "{emu / "cuda_emulator.h"}"\n'
        "double out[32];\n"
        "void k() { __shared__ double b[32]; b[threadIdx.x] = threadIdx.x;\n"
        "  out[threadIdx.x] = b[(threadIdx.x + 1) % 32]; }\n"
        "int main() { warp_emulator::run_grid({1, 1, 1}, 32, k); return 0; }\n"
    )
    built = subprocess.run(
        [_CXX, *flags, str(probe), "-o", str(tmp_path / "probe")], capture_output=True
    )
    if built.returncode != 0:
        pytest.skip(f"no ThreadSanitizer runtime here: {built.stderr.decode()[:200]}")
    racy = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, timeout=60)
    assert "ThreadSanitizer: data race" in racy.stderr  # the sanitizer does see a missing barrier
    sources = [str(emu / n) for n in ("race_main.cpp", "min_norm_host.cpp", "gram_host.cpp")]
    sources.append(str(emu / "adam_host.cpp"))
    exe = tmp_path / "race_main"
    subprocess.run([_CXX, *flags, *sources, "-o", str(exe)], check=True, timeout=300)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert "ThreadSanitizer" not in run.stderr, run.stderr[:4000]
    assert run.returncode == 0
    assert "sum(w)=1.000000000000" in run.stdout


@pytest.mark.parametrize("pdtype", [torch.bfloat16, torch.float16])
def test_multi_adam_kernel_code_low_precision_params(
    adam_lib: ctypes.CDLL, pdtype: torch.dtype
) -> None:
    """MultiAdam's layout for fp16/bf16 parameters: low-precision p and g, fp32 moments."""
    fn = getattr(adam_lib, f"mtl_fast_multi_adam_emulated_{_SUFFIX[pdtype]}")
    fn.argtypes = [vp] * 8 + [i64, i64, vp, dbl, dbl, dbl, dbl, dbl]
    gen = torch.Generator().manual_seed(3)
    T, P = 3, 2000
    p = torch.randn(P, generator=gen).to(pdtype)
    ours = [p.clone(), torch.zeros(T, P), torch.zeros(T, P), torch.zeros(T)]
    theirs = [p.clone(), torch.zeros(T, P), torch.zeros(T, P), torch.zeros(T)]
    for tasks in ([0, 1, 2], [1], [2, 0]):
        G = torch.randn(T, P, generator=gen).to(pdtype)
        idx = torch.tensor(tasks)
        w = torch.ones(len(tasks))
        w64 = w.double()
        kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01)
        ref.multi_adam(AdamState(*theirs), G, idx, idx, w.double(), AdamHyper(**kw))
        ptrs = (_ptr(x) for x in (ours[0], G, idx, ours[1], ours[2], ours[3], idx, w64))
        fn(*ptrs, len(tasks), P, None, 1e-2, 0.9, 0.999, 1e-8, 0.01)
    ulp = torch.finfo(pdtype).eps
    assert _rel(ours[0], theirs[0].double()) <= 2 * ulp
    assert _rel(ours[1], theirs[1].double()) <= 1e-5
    assert _rel(ours[2], theirs[2].double()) <= 1e-5
    assert torch.equal(ours[3], theirs[3])


def test_combine_adam_kernel_code_bf16_gradients(adam_lib: ctypes.CDLL) -> None:
    fn = adam_lib.mtl_fast_combine_adam_emulated_bf16
    fn.argtypes = [vp] * 6 + [i64, i64, vp, dbl, dbl, dbl, dbl, dbl]
    gen = torch.Generator().manual_seed(9)
    T, P = 4, 1500
    state = [torch.randn(P, generator=gen), torch.zeros(P), torch.zeros(P), torch.zeros(1)]
    ours = [x.clone() for x in state]
    theirs = [x.clone() for x in state]
    for _ in range(5):
        J = torch.randn(T, P, generator=gen).to(torch.bfloat16)
        w = torch.rand(T, generator=gen)
        kw = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
        ref.combine_adam(
            AdamState(theirs[0], theirs[1][None], theirs[2][None], theirs[3]), J, w, AdamHyper(**kw)
        )
        ptrs = (_ptr(x) for x in (ours[0], J, w, ours[1], ours[2], ours[3]))
        fn(*ptrs, T, P, None, 1e-2, 0.9, 0.999, 1e-8, 0.0)
    # d is rounded to bf16 as the reference rounds it; fp32 sums in another order may round a
    # few entries of d to the neighbouring bf16 value.
    tol = 2 * torch.finfo(torch.bfloat16).eps
    for name, a, b in zip(("param", "exp_avg", "exp_avg_sq"), ours, theirs):
        assert _rel(a, b.double()) <= tol, name
