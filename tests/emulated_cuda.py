"""The CUDA backend's device code, run on the CPU, behind the backend calling convention.

``csrc/*_kernel.cuh`` hold the device code of every CUDA kernel, free of ATen;
``csrc/emulate/*_host.cpp`` compile that very code with the host C++ compiler against a small
CUDA emulator (one std::thread per CUDA thread, barriers for ``__syncthreads`` and for every warp
shuffle/ballot) and launch it with the same plan as the extension. This module compiles them once
(:func:`build`) and exposes the ops with exactly the signatures of
:mod:`mtl_fast._core.contracts`, doing what the launchers in ``mtl_fast/kernels/cuda/`` do before
they call the extension (contiguous inputs; the Adam ops call the launchers' own preparation of
their inputs and scalars), so that the op tests run the same bodies on it as on every other
backend.

It checks the kernels' logic — tiling, pair decoding, chunk reduction, warp reductions, the solver
step for step, the Adam arithmetic — in every dtype the extension launches. It does not check
timing, the GPU memory model or the host launch code (the ``cuda`` backend's tests do, on a GPU).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

from mtl_fast._core.contracts import AdamHyper, AdamRows, AdamState
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast.kernels.cuda.adam import combine_adam_inputs, multi_adam_inputs, scalars

CSRC = Path(__file__).resolve().parents[1] / "csrc"
EMULATE = CSRC / "emulate"
CXX = shutil.which("g++") or shutil.which("c++")
# c10's fp16/bf16 types are header-only on the host.
TORCH_INCLUDE = f"-I{Path(torch.__file__).resolve().parent / 'include'}"
LIBRARIES = ("gram_host", "min_norm_host", "adam_host")

OPS = frozenset(
    {"gram", "gram_list", "min_norm", "combine", "multi_adam", "combine_adam", "sign_conflict"}
)
# As the extension (mtl_fast.kernels.cuda.min_norm.MAX_MIN_NORM_TASKS).
MAX_MIN_NORM_TASKS = 2048
TASK_LIMITS = {"min_norm": MAX_MIN_NORM_TASKS}
# The SM count the Gram / sign-conflict plans are made for: a few chunks per problem, so the chunk
# reduction runs. Backend-specific tests plan for other counts with gram_planned().
SMS = 4

_SUFFIX = {torch.float64: "f64", torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}
_libs: dict[str, ctypes.CDLL] = {}
_i64, _vp, _dbl, _int = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double, ctypes.c_int


def compiler_reason() -> str | None:
    """Why the emulated kernels cannot be built here, or None."""
    if CXX is None:
        return "needs a host C++20 compiler (g++ or c++ on PATH) to build csrc/emulate"
    return None


def build(out_dir: Path, timeout: float = 900) -> None:
    """Compile the three emulator libraries into ``out_dir`` (in parallel) and load them."""
    assert CXX is not None, compiler_reason()
    flags = ["-std=c++20", "-O2", "-fPIC", "-shared", "-pthread", TORCH_INCLUDE]
    jobs = {}
    for name in LIBRARIES:
        lib = out_dir / f"{name}.so"
        cmd = [CXX, *flags, "-o", str(lib), str(EMULATE / f"{name}.cpp")]
        jobs[name] = (lib, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True))
    for name, (lib, proc) in jobs.items():
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling csrc/emulate/{name}.cpp failed:\n{err[-4000:]}")
        _libs[name] = ctypes.CDLL(str(lib))


def unavailable_reason() -> str | None:
    reason = compiler_reason()
    if reason is None and not _libs:
        reason = "the emulator libraries are not built yet (call build(out_dir) first)"
    return reason


def device_reason(device: torch.device) -> str | None:
    if device.type != "cpu":
        return f"the emulated device code runs on CPU tensors only, got a tensor on {device}"
    return None


def _fn(lib: str, name: str, argtypes: list) -> ctypes._CFuncPtr:
    fn = getattr(_libs[lib], name)
    fn.argtypes = argtypes
    return fn


def _ptr(x: torch.Tensor | None) -> int | None:
    return None if x is None else x.data_ptr()


# ---------------------------------------------------------------------- gram, sign_conflict


def gram_planned(
    J: torch.Tensor, sms: int, K: torch.Tensor | None = None, *, sign: bool = False
) -> torch.Tensor:
    """The Gram (or the sign conflicts) of contiguous (B, T, P) J, planned for ``sms`` SMs.

    With ``K`` the Gram is added to it in place (the extension's gram_list accumulates so).
    """
    J = J.contiguous()
    B, T, P = J.shape
    if sign:
        out = torch.empty(B, T, T, dtype=torch.float64)
        fn = _fn(
            "gram_host",
            f"mtl_fast_sign_conflict_emulated_{_SUFFIX[J.dtype]}",
            [_vp, _vp, _i64, _i64, _i64, _int],
        )
        fn(J.data_ptr(), out.data_ptr(), B, T, P, sms)
        return out
    out = K if K is not None else torch.empty(B, T, T, dtype=accumulation_dtype(J.dtype))
    assert out.is_contiguous() and out.dtype == accumulation_dtype(J.dtype)
    fn = _fn(
        "gram_host",
        f"mtl_fast_gram_emulated_{_SUFFIX[J.dtype]}",
        [_vp, _vp, _i64, _i64, _i64, _int, _int],
    )
    fn(J.data_ptr(), out.data_ptr(), B, T, P, sms, int(K is not None))
    return out


def gram(J: torch.Tensor, /) -> torch.Tensor:
    return gram_planned(J, SMS)


def gram_list(grads: Sequence[torch.Tensor], /) -> torch.Tensor:
    """As csrc/gram.cu: K = 0, then one accumulating launch per (contiguous) block."""
    T = grads[0].shape[0]
    K = torch.zeros(1, T, T, dtype=accumulation_dtype(grads[0].dtype))
    for g in grads:
        if g.numel():
            gram_planned(g.contiguous().view(1, T, g.shape[1]), SMS, K)
    return K.view(T, T)


def sign_conflict(J: torch.Tensor, /) -> torch.Tensor:
    return gram_planned(J, SMS, sign=True)


# ------------------------------------------------------------------------ min_norm, combine


def min_norm(K: torch.Tensor, /, *, max_iter: int, tol: float, sync_free: bool) -> torch.Tensor:
    """One emulated warp per problem; like the extension it never reads back, whatever
    ``sync_free`` says."""
    del sync_free
    B, T, _ = K.shape
    if T > MAX_MIN_NORM_TASKS:
        raise ValueError(f"the CUDA min_norm supports T ≤ {MAX_MIN_NORM_TASKS} tasks, got T={T}")
    K = K.contiguous()
    W = torch.empty(B, T, dtype=K.dtype)
    fn = _fn(
        "min_norm_host",
        f"mtl_fast_min_norm_emulated_{_SUFFIX[K.dtype]}",
        [_vp, _vp, _i64, _int, _i64, _dbl],
    )
    fn(K.data_ptr(), W.data_ptr(), B, T, max_iter, float(tol))
    return W


def combine(J: torch.Tensor, w: torch.Tensor, /) -> torch.Tensor:
    J, w = J.contiguous(), w.contiguous()
    B, T, P = J.shape
    assert w.dtype == accumulation_dtype(J.dtype), (w.dtype, J.dtype)
    d = torch.empty(B, P, dtype=J.dtype)
    fn = _fn(
        "adam_host",
        f"mtl_fast_combine_emulated_{_SUFFIX[J.dtype]}",
        [_vp, _vp, _vp, _i64, _i64, _i64],
    )
    fn(J.data_ptr(), w.data_ptr(), d.data_ptr(), B, T, P)
    return d


# ------------------------------------------------------------------------------------ Adam


def _adam_call(
    name: str, tensors: tuple[torch.Tensor, ...], n: int, P: int, hyper: AdamHyper
) -> None:
    """Calls the Adam entry point ``name`` on the tensors, (n, P) and the hyperparameters, which
    it takes as the extension's op does."""
    fn = _fn(
        "adam_host", name, [_vp] * len(tensors) + [_i64, _i64, _vp, _dbl, _dbl, _dbl, _dbl, _dbl]
    )
    lr_tensor, *values = scalars(hyper, tensors[0])
    fn(*(_ptr(x) for x in tensors), n, P, _ptr(lr_tensor), *values)


def multi_adam(state: AdamState, rows: AdamRows, hyper: AdamHyper, /) -> None:
    grads, grad_rows, tasks = multi_adam_inputs(state, rows)
    param, m, v = state.param, state.exp_avg, state.exp_avg_sq
    assert m.dtype == v.dtype == accumulation_dtype(param.dtype), (param.dtype, m.dtype)
    assert state.step.dtype == torch.float32
    weights = rows.weights.to(torch.float64).contiguous()
    suffix = _SUFFIX[param.dtype]
    if param.dtype in (torch.float16, torch.bfloat16) and grads.dtype == torch.float32:
        suffix += "_f32grads"
    _adam_call(
        f"mtl_fast_multi_adam_emulated_{suffix}",
        (param, grads, grad_rows, m, v, state.step, tasks, weights),
        tasks.shape[0],
        param.numel(),
        hyper,
    )


def combine_adam(state: AdamState, J: torch.Tensor, w: torch.Tensor, hyper: AdamHyper, /) -> None:
    param = state.param
    J, w = combine_adam_inputs(param, J, w)
    T, P = J.shape
    assert w.dtype == param.dtype == state.exp_avg.dtype, (w.dtype, param.dtype)
    m, v = state.exp_avg.view(-1), state.exp_avg_sq.view(-1)
    _adam_call(
        f"mtl_fast_combine_adam_emulated_{_SUFFIX[J.dtype]}",
        (param, J, w, m, v, state.step),
        T,
        P,
        hyper,
    )
