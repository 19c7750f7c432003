"""CUDA C++ backend: hand-written kernels from ``csrc/``, registered as ``torch.ops.mtl_fast_cuda``.

Importing this package compiles and loads nothing. The dispatch (``mtl_fast._core.dispatch``) calls
:func:`unavailable_reason` when the ``cuda`` backend is first asked for; that loads an already
built extension (``mtl_fast._C`` from ``MTL_FAST_BUILD_CUDA=1 pip install ...``, or a stamped
just-in-time build), or compiles one with ninja when ``MTL_FAST_CUDA_JIT=1`` is set (see
``mtl_fast.kernels.cuda.build``). Otherwise it reports why the backend is missing and every other
backend keeps working.

One file per op (``gram.py``, ``min_norm.py``, ``combine.py``, ``adam.py``,
``sign_conflict.py``) holds its launcher with the calling convention of
:mod:`mtl_fast._core.contracts`; each makes inputs contiguous and casts the small side tensors
(indices, lr) to the dtypes the kernels take. The ops have fake implementations
(``fake.py``), so they trace under ``torch.compile``.
"""

from __future__ import annotations

import functools

import torch

from mtl_fast.kernels.cuda import build as _build
from mtl_fast.kernels.cuda.adam import combine_adam, multi_adam
from mtl_fast.kernels.cuda.combine import combine
from mtl_fast.kernels.cuda.gram import gram, gram_list
from mtl_fast.kernels.cuda.min_norm import MAX_MIN_NORM_TASKS, min_norm
from mtl_fast.kernels.cuda.sign_conflict import sign_conflict

OPS = frozenset(
    {"gram", "gram_list", "min_norm", "combine", "multi_adam", "combine_adam", "sign_conflict"}
)
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
            f"the just-in-time CUDA build failed: {head} (run `python -m mtl_fast.kernels.cuda "
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
