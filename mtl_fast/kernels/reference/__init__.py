"""Pure-PyTorch reference implementations: the CPU path and the ground truth for every kernel.

Importable without Triton or a compiler. The functions here take already-validated inputs in the
backend calling convention (see ``mtl_fast._core.dispatch``); users call the public ops
(:func:`mtl_fast.gram`, ...) instead, which validate and then dispatch here or to a kernel.
"""

from __future__ import annotations

import torch

from mtl_fast._core.contracts import CONTRACTS
from mtl_fast.kernels.reference.adam import combine_adam, multi_adam
from mtl_fast.kernels.reference.aggregators import (
    aligned_mtl,
    cagrad,
    config,
    imtlg,
    nash_mtl,
    pcgrad,
)
from mtl_fast.kernels.reference.combine import combine
from mtl_fast.kernels.reference.dual_cone import dual_cone
from mtl_fast.kernels.reference.gram import gram, gram_list
from mtl_fast.kernels.reference.min_norm import min_norm
from mtl_fast.kernels.reference.sign_conflict import sign_conflict

OPS = frozenset(CONTRACTS)  # every op, one function each, named after it

__all__ = [
    "OPS",
    "aligned_mtl",
    "cagrad",
    "combine",
    "combine_adam",
    "config",
    "dual_cone",
    "gram",
    "gram_list",
    "imtlg",
    "min_norm",
    "multi_adam",
    "nash_mtl",
    "pcgrad",
    "sign_conflict",
]


def unavailable_reason() -> str | None:
    return None


def device_reason(device: torch.device) -> str | None:
    return None
