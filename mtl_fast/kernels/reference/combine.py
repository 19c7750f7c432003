"""Reference combine d = Σ_t w_t J_t."""

from __future__ import annotations

import torch

from mtl_fast._core.precision import accumulation_dtype


def combine(J: torch.Tensor, w: torch.Tensor, /) -> torch.Tensor:
    """d[b] = Σ_t w[b, t] J[b, t].

    Args:
        J: (B, T, P) floating tensor.
        w: (B, T) floating tensor on J's device.

    Returns:
        (B, P) in J's dtype, accumulated in fp32 (fp64 for fp64 J).
    """
    acc = accumulation_dtype(J.dtype)
    d = torch.bmm(w.to(acc).unsqueeze(1), J.to(acc)).squeeze(1)
    return d.to(J.dtype)
