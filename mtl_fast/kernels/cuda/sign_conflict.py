"""``sign_conflict`` on the CUDA extension (csrc/gram.cu, the Gram's tiling on signs)."""

from __future__ import annotations

import torch


def sign_conflict(J: torch.Tensor, /) -> torch.Tensor:
    """Fraction of coordinates with opposite signs. J: (B, T, P), P ≥ 1 -> (B, T, T) fp64."""
    out: torch.Tensor = torch.ops.mtl_fast_cuda.sign_conflict(J.contiguous())
    return out
