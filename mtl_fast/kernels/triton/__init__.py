"""Triton backend: fused Gram, batched min-norm and dual-cone solves, combine and Adam kernels, and
the iterative Gram-space aggregators (PCGrad, CAGrad, Nash-MTL).

One file per op (``_gram.py``, ``_min_norm.py``, ``_combine.py``, ``_adam.py``): private
``@triton.jit`` kernels first, then the host launchers, which take the backend calling
convention of :mod:`mtl_fast.kernels.reference` (already-validated inputs) and choose block sizes. The
kernels run on CUDA devices; under ``TRITON_INTERPRET=1`` (set before Triton is imported, as the
test suite does on a machine without a GPU) they run on CPU tensors through Triton's interpreter.

Importing this package without Triton installed does not fail: :func:`unavailable_reason` says
why the backend is missing and the dispatcher falls back (``backend="auto"``) or raises
(``backend="triton"``).
"""

from __future__ import annotations

import torch

OPS = frozenset(
    {
        "gram",
        "gram_list",
        "min_norm",
        "combine",
        "multi_adam",
        "combine_adam",
        "pcgrad",
        "cagrad",
        "nash_mtl",
        "dual_cone",
    }
)
# Largest T per op ("auto" passes over this backend above it); filled once Triton imports.
TASK_LIMITS: dict[str, int] = {}

try:
    import triton  # the top-level package, not this one
except ImportError as exc:  # the core package must work without Triton
    _IMPORT_ERROR: str | None = (
        f"triton is not installed ({exc}); install it with pip install 'mtl-fast[triton]'"
    )
else:
    import numpy as np

    from mtl_fast._core.dispatch import op_functions
    from mtl_fast.kernels.triton.aggregators import MAX_TASKS as MAX_AGGREGATOR_TASKS
    from mtl_fast.kernels.triton.common import INTERPRETED, interpreter_problem
    from mtl_fast.kernels.triton.dual_cone import MAX_TASKS as DUAL_CONE_MAX_TASKS
    from mtl_fast.kernels.triton.min_norm import MAX_TASKS

    # Each op's function, from the file OP_FILES names (gram.py, adam.py, ...).
    globals().update(op_functions(__name__, OPS))

    # The solver keeps K and its face system in registers: one program per problem.
    TASK_LIMITS["min_norm"] = MAX_TASKS
    TASK_LIMITS.update(dict.fromkeys(("pcgrad", "cagrad", "nash_mtl"), MAX_AGGREGATOR_TASKS))
    # One program per (problem, row) keeps the fp64 G̃ tile in registers.
    TASK_LIMITS["dual_cone"] = DUAL_CONE_MAX_TASKS
    _IMPORT_ERROR = interpreter_problem(triton.__version__, np.__version__) if INTERPRETED else None

__all__ = ["MAX_TASKS", "OPS", "device_reason", "unavailable_reason", *sorted(OPS)]


def unavailable_reason() -> str | None:
    """Why the Triton backend cannot run at all here, or None."""
    return _IMPORT_ERROR


def device_reason(device: torch.device) -> str | None:
    """Why the kernels cannot run on tensors of ``device``, or None."""
    if INTERPRETED:
        if device.type != "cpu":
            return "TRITON_INTERPRET=1 is set: the interpreter runs the kernels on CPU tensors only"
        return None
    if device.type != "cuda":
        return (
            f"Triton kernels run on CUDA devices, not {device.type} "
            "(set TRITON_INTERPRET=1 before importing mtl_fast to interpret them on the CPU)"
        )
    if torch.version.hip is not None:
        return "the kernels are written and tested for NVIDIA GPUs only"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return f"needs compute capability ≥ 8.0 (Ampere or newer), this GPU has {major}.{minor}"
    return None
