"""``gram`` and ``gram_list`` on the CUDA extension (csrc/gram.cu)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def gram(J: torch.Tensor, /) -> torch.Tensor:
    """K = J Jᵀ. J: (B, T, P) fp16/bf16/fp32/fp64 -> (B, T, T) fp32 (fp64 for fp64 J)."""
    out: torch.Tensor = torch.ops.mtl_fast_cuda.gram(J.contiguous())
    return out


def gram_list(grads: Sequence[torch.Tensor], /) -> torch.Tensor:
    """K = Σ_i G_i G_iᵀ over (T, n_i) blocks of one dtype -> (T, T) in the accumulation dtype."""
    out: torch.Tensor = torch.ops.mtl_fast_cuda.gram_list([g.contiguous() for g in grads])
    return out
