"""``gram`` on the compiled CPU kernel (see :mod:`mtl_fast.kernels.cpu.dense`)."""

from __future__ import annotations

import torch

from mtl_fast.kernels.cpu.dense import KERNEL_DTYPES, run_gram
from mtl_fast.kernels.cpu.registered import traced
from mtl_fast.kernels.reference.gram import gram as _ref_gram


def gram(J: torch.Tensor, /) -> torch.Tensor:
    """K[b] = J[b] J[b]ᵀ. J: (B, T, P) CPU tensor -> (B, T, T) fp32 (fp64 for fp64), exactly
    symmetric."""
    if J.dtype not in KERNEL_DTYPES:
        return _ref_gram(J)
    if traced(J):
        out: torch.Tensor = torch.ops.mtl_fast_cpu.gram(J)
        return out
    return run_gram(J)
