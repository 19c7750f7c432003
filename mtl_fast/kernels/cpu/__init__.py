"""CPU backend: the compiled min-norm and dual-cone solvers, Gram and combination, and Gram-space
aggregators of ``csrc/cpu/``, loaded with ctypes (the Gram and combination kernels:
:mod:`mtl_fast.kernels.cpu.dense`).

``setup.py`` builds the solver at install time as an optional shared library next to this file
(``_lib`` plus the platform's extension-module suffix). Without a C++ compiler the install
still succeeds and :func:`unavailable_reason` says that the library is missing and how to build
it; ``"auto"`` then runs the reference on CPU tensors.

The solver runs the reference algorithm (:mod:`mtl_fast.kernels.reference.min_norm`) problem by
problem in fp64, as a compiled loop instead of ~60 small torch operations per iteration.
Measured on one thread (a loaded 2-core machine, medians): one T = 10 problem takes 3-5 µs in
the solver and ~25 µs through ``mtl_fast.min_norm``, against 8-11 ms for the reference; one
T = 64 problem 0.03-0.15 ms in the solver against 20-40 ms; 1024 problems of T = 8 take 6 ms
against 33 ms for the batched reference.

The dual-cone (UPGrad, DualProj) solver, ``torch.ops.mtl_fast_cpu.dual_cone``, runs the reference
algorithm of :mod:`mtl_fast.kernels.reference.dual_cone` row by row with an updated Cholesky
factor (see :mod:`mtl_fast.kernels.cpu.dual_cone`); both solvers live in the same library.

The op is registered as ``torch.ops.mtl_fast_cpu.min_norm`` with a fake implementation, so
``torch.compile(fullgraph=True)`` traces it as one opaque node. Called eagerly on a plain
tensor, :func:`~mtl_fast.kernels.cpu.min_norm.min_norm` skips the dispatcher and calls the library directly: at T = 10 the
custom op's eager dispatch takes 14-21 µs, the direct call 9 µs with the solve. Either way the
weights are not differentiable: they are a constant of the step, and no gradient flows to K.
"""

from __future__ import annotations

import torch

from mtl_fast._core.contracts import AGGREGATOR_OPS
from mtl_fast._core.dispatch import op_functions
from mtl_fast.kernels.cpu.aggregators import MAX_AGGREGATOR_TASKS
from mtl_fast.kernels.cpu.combine import combine
from mtl_fast.kernels.cpu.dual_cone import MAX_DUAL_CONE_TASKS, dual_cone
from mtl_fast.kernels.cpu.gram import gram
from mtl_fast.kernels.cpu.loader import (
    ABI_VERSION,
    AGGREGATORS_ABI_VERSION,
    DUAL_CONE_ABI_VERSION,
    aggregator_library,
    dense_kernels,
    dual_cone_library,
    library,
    library_path,
)
from mtl_fast.kernels.cpu.min_norm import MAX_MIN_NORM_TASKS, min_norm

# The aggregators' functions (aggregators.py), one each.
globals().update(op_functions(__name__, AGGREGATOR_OPS))

# gram and combine only when the library has them (one built before they existed does not). The
# aggregators (PCGrad, IMTL-G, CAGrad, Nash-MTL, Aligned-MTL, ConFIG: csrc/cpu/aggregators.cpp)
# one problem at a time: measured on one thread, 26-284 µs per call through the public functions
# at T = 2-40, against 0.18-6.5 ms for the batched reference (docs/aggregators.md).
OPS = (
    frozenset({"min_norm", "dual_cone"})
    | (frozenset() if isinstance(dense_kernels(), str) else frozenset({"gram", "combine"}))
    | (frozenset() if isinstance(aggregator_library(), str) else frozenset(AGGREGATOR_OPS))
)
_LIMITS = {"min_norm": MAX_MIN_NORM_TASKS, "dual_cone": MAX_DUAL_CONE_TASKS} | dict.fromkeys(
    AGGREGATOR_OPS, MAX_AGGREGATOR_TASKS
)
TASK_LIMITS = {op: limit for op, limit in _LIMITS.items() if op in OPS}

__all__ = [
    "ABI_VERSION",
    "AGGREGATORS_ABI_VERSION",
    "DUAL_CONE_ABI_VERSION",
    "MAX_AGGREGATOR_TASKS",
    "MAX_DUAL_CONE_TASKS",
    "MAX_MIN_NORM_TASKS",
    "OPS",
    "TASK_LIMITS",
    "aggregator_library",
    "combine",
    "dense_kernels",
    "device_reason",
    "dual_cone",
    "dual_cone_library",
    "gram",
    "library",
    "library_path",
    "min_norm",
    "unavailable_reason",
    *AGGREGATOR_OPS,
]


def unavailable_reason() -> str | None:
    """Why the CPU backend cannot run on this machine (the library is missing, or left over from
    a version without one of its solvers), or None."""
    for loaded in (library(), dual_cone_library()):
        if isinstance(loaded, str):
            return loaded
    return None


def device_reason(device: torch.device) -> str | None:
    """Why the solver cannot run on tensors of ``device`` (it runs on CPU tensors only)."""
    if device.type != "cpu":
        return f"the compiled CPU solver runs on CPU tensors only, got a tensor on {device}"
    return None
