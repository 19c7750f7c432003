"""``combine`` on the CUDA extension (csrc/combine.cu): one pass over J."""

from __future__ import annotations

import torch


def combine(J: torch.Tensor, w: torch.Tensor, /) -> torch.Tensor:
    """d = Σ_t w_t J_t. J: (B, T, P), w: (B, T) in the accumulation dtype -> (B, P) in J's."""
    out: torch.Tensor = torch.ops.mtl_fast_cuda.combine(J.contiguous(), w.contiguous())
    return out
