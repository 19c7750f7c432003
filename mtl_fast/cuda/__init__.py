"""CUDA C++ backend: hand-written kernels from ``csrc/``, registered as ``torch.ops.mtl_fast_cuda``.

Importing this package compiles and loads nothing. The dispatch (``mtl_fast._dispatch``) calls
:func:`unavailable_reason` when the ``cuda`` backend is first asked for; that loads an already
built extension (``mtl_fast._C`` from ``MTL_FAST_BUILD_CUDA=1 pip install ...``, or a stamped
just-in-time build), or compiles one with ninja when ``MTL_FAST_CUDA_JIT=1`` is set (see
``mtl_fast.cuda._build``). Otherwise it reports why the backend is missing and every other
backend keeps working.

The functions below follow the backend calling convention of ``mtl_fast.reference`` (inputs
already validated by the public ops); they make inputs contiguous and cast the small side
tensors (weights, indices, lr) to the dtypes the kernels take. The ops have fake
implementations, so they trace under ``torch.compile``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from mtl_fast.cuda import _build

OPS = frozenset(
    {"gram", "gram_list", "min_norm", "combine", "multi_adam", "combine_adam", "sign_conflict"}
)
# One warp per problem; scratch in shared memory up to T = 64, in global memory (≈ 16·T² bytes
# per problem) beyond, up to this bound (csrc/min_norm.cu).
MAX_MIN_NORM_TASKS = 2048
# Read by the dispatch: "auto" passes over this backend above the limit, an explicit request
# names it.
TASK_LIMITS = {"min_norm": MAX_MIN_NORM_TASKS}

__all__ = [
    "MAX_MIN_NORM_TASKS",
    "OPS",
    "TASK_LIMITS",
    "combine",
    "combine_adam",
    "device_reason",
    "gram",
    "gram_list",
    "min_norm",
    "multi_adam",
    "sign_conflict",
    "unavailable_reason",
]


def unavailable_reason() -> str | None:
    """Why the CUDA backend cannot run on this machine, or None.

    Loads the compiled extension if one exists (and builds it first when
    ``MTL_FAST_CUDA_JIT=1``); never compiles otherwise.
    """
    try:
        path = _build.load(allow_build=_build.jit_requested())
    except _build.ExtensionUnavailable as exc:
        return str(exc)
    except _build.BuildTimeoutError as exc:
        return str(exc)
    except (RuntimeError, OSError) as exc:  # a failed compile: say so, keep the rest working
        first = str(exc).strip().splitlines()[:1]
        head = first[0] if first else type(exc).__name__
        return (
            f"the just-in-time CUDA build failed: {head} (run `python -m mtl_fast.cuda "
            "--verbose` to see the compiler output)"
        )
    if not torch.cuda.is_available():
        return f"no CUDA device is visible (the extension is built: {path})"
    return None


@functools.cache
def _compiled_archs() -> tuple[int, ...]:
    return tuple(int(a) for a in torch.ops.mtl_fast_cuda.compiled_archs())


def device_reason(device: torch.device) -> str | None:
    """Why the kernels cannot run on tensors of ``device``, or None."""
    if device.type != "cuda":
        return f"the CUDA extension runs on CUDA tensors only, got a tensor on {device}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    cap = 10 * major + minor
    archs = _compiled_archs()
    # SASS for sm_XY runs on devices of the same major version with minor ≥ Y.
    if archs and not any(a // 10 == major and a <= cap for a in archs):
        built = ", ".join(f"sm_{a}" for a in archs)
        return (
            f"the extension was compiled for {built}, not for this sm_{cap} device; rebuild "
            f"with TORCH_CUDA_ARCH_LIST={major}.{minor}"
        )
    return None


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram(J: torch.Tensor) -> torch.Tensor:
    """K = J Jᵀ. J: (B, T, P) fp16/bf16/fp32/fp64 -> (B, T, T) fp32 (fp64 for fp64 J)."""
    out: torch.Tensor = torch.ops.mtl_fast_cuda.gram(J.contiguous())
    return out


def gram_list(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """K = Σ_i G_i G_iᵀ over (T, n_i) blocks of one dtype -> (T, T) in the accumulation dtype."""
    out: torch.Tensor = torch.ops.mtl_fast_cuda.gram_list([g.contiguous() for g in grads])
    return out


def sign_conflict(J: torch.Tensor) -> torch.Tensor:
    """Fraction of coordinates with opposite signs. J: (B, T, P), P ≥ 1 -> (B, T, T) fp64."""
    out: torch.Tensor = torch.ops.mtl_fast_cuda.sign_conflict(J.contiguous())
    return out


def min_norm(K: torch.Tensor, *, max_iter: int, tol: float, sync_free: bool) -> torch.Tensor:
    """Min-norm weights on the simplex for K (B, T, T) fp32/fp64, T ≤ 2048 -> (B, T).

    The kernel never reads a value back to the host, whatever ``sync_free`` says: each warp
    stops on its own once its problem has converged (or after ``max_iter`` iterations).
    """
    T = K.shape[-1]
    if T > MAX_MIN_NORM_TASKS:
        raise ValueError(
            f"backend='cuda' min_norm supports T ≤ {MAX_MIN_NORM_TASKS} tasks (its scratch grows "
            f"as T²), got K with T = {T}; use backend='triton' or 'reference'"
        )
    out: torch.Tensor = torch.ops.mtl_fast_cuda.min_norm(K.contiguous(), max_iter, float(tol))
    return out


def combine(J: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """d = Σ_t w_t J_t. J: (B, T, P), w: (B, T) -> (B, P) in J's dtype."""
    out: torch.Tensor = torch.ops.mtl_fast_cuda.combine(
        J.contiguous(), w.to(_acc(J.dtype)).contiguous()
    )
    return out


def _lr_args(lr: float | torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor | None, float]:
    if isinstance(lr, torch.Tensor):
        return lr.to(device=like.device, dtype=torch.float64).reshape(1), 0.0
    return None, float(lr)


def multi_adam(
    param: torch.Tensor,
    grads: torch.Tensor,
    grad_rows: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    tasks: torch.Tensor,
    weights: torch.Tensor,
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """One multi-state Adam step in place (shapes as ``mtl_fast.reference.multi_adam``).

    param (P,) and exp_avg/exp_avg_sq (T, P) must be contiguous (they are updated in place);
    grads whose dtype is neither param's nor the states' is cast to the states' dtype first.
    """
    for name, x in (("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous for backend='cuda' (updated in place)")
    if not step.is_contiguous():
        raise ValueError("step must be contiguous for backend='cuda' (updated in place)")
    if grads.dtype not in (param.dtype, exp_avg.dtype):
        grads = grads.to(exp_avg.dtype)
    lr_tensor, lr_value = _lr_args(lr, param)
    torch.ops.mtl_fast_cuda.multi_adam(
        param,
        grads.contiguous(),
        grad_rows.to(torch.int64).contiguous(),
        exp_avg,
        exp_avg_sq,
        step,
        tasks.to(torch.int64).contiguous(),
        weights.to(torch.float64).contiguous(),
        lr_tensor,
        lr_value,
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
    )


def combine_adam(
    param: torch.Tensor,
    J: torch.Tensor,
    w: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    *,
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
) -> None:
    """d = Σ_t w_t J_t and one single-state Adam(W) step with d, fused, in place.

    param, exp_avg, exp_avg_sq: (P,) fp32 or fp64; J: (T, P) (fp16/bf16/fp32 for fp32 param;
    any other combination is cast to param's dtype first); w: (T,); step: (1,) fp32.
    """
    if param.dtype == torch.float64 and J.dtype != torch.float64:
        J = J.to(torch.float64)
    elif param.dtype == torch.float32 and J.dtype == torch.float64:
        J = J.to(torch.float32)
    lr_tensor, lr_value = _lr_args(lr, param)
    torch.ops.mtl_fast_cuda.combine_adam(
        param,
        J.contiguous(),
        w.to(_acc(J.dtype)).contiguous(),
        exp_avg,
        exp_avg_sq,
        step,
        lr_tensor,
        lr_value,
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
    )
