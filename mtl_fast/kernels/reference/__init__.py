"""Pure-PyTorch reference implementations: the CPU path and the ground truth for every kernel.

Importable without Triton or a compiler. The functions here take already-validated inputs in the
backend calling convention (see ``mtl_fast._core.dispatch``); users call the public ops
(:func:`mtl_fast.gram`, ...) instead, which validate and then dispatch here or to a kernel.
"""

from __future__ import annotations

import torch

from mtl_fast._core.contracts import AGGREGATOR_OPS, CONTRACTS
from mtl_fast._core.dispatch import op_functions
from mtl_fast.kernels.reference.adam import combine_adam, multi_adam
from mtl_fast.kernels.reference.combine import combine
from mtl_fast.kernels.reference.dual_cone import dual_cone
from mtl_fast.kernels.reference.gram import gram, gram_list
from mtl_fast.kernels.reference.min_norm import min_norm
from mtl_fast.kernels.reference.sign_conflict import sign_conflict

OPS = frozenset(CONTRACTS)  # every op, one function each, named after it
# The Gram-space aggregators (aggregators.py), one function each.
globals().update(op_functions(__name__, AGGREGATOR_OPS))

__all__ = [
    "OPS",
    "combine",
    "combine_adam",
    "dual_cone",
    "gram",
    "gram_list",
    "min_norm",
    "multi_adam",
    "sign_conflict",
    *AGGREGATOR_OPS,
]


def unavailable_reason() -> str | None:
    return None


def device_reason(device: torch.device) -> str | None:
    return None
