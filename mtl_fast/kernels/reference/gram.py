"""Reference Gram matrix K = J Jᵀ with fp32 accumulation (fp64 for fp64 input)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_fast._core.precision import accumulation_dtype


def gram(J: torch.Tensor, /) -> torch.Tensor:
    """K[b] = J[b] J[b]ᵀ.

    Args:
        J: (B, T, P) floating tensor.

    Returns:
        (B, T, T) in the accumulation dtype, exactly symmetric.
    """
    Ja = J.to(accumulation_dtype(J.dtype))
    K = Ja @ Ja.transpose(-1, -2)
    # A matmul is not guaranteed to give bitwise-symmetric output; the solver and the PSD
    # checks downstream want exact symmetry, so average with the transpose.
    return 0.5 * (K + K.transpose(-1, -2))


def gram_list(grads: Sequence[torch.Tensor], /) -> torch.Tensor:
    """K = Σ_p G_p G_pᵀ over per-parameter gradient blocks, without concatenating them.

    Args:
        grads: non-empty sequence of (T, n_p) tensors of one dtype and device.

    Returns:
        (T, T) in the accumulation dtype.
    """
    acc = accumulation_dtype(grads[0].dtype)
    T = grads[0].shape[0]
    K = torch.zeros(T, T, dtype=acc, device=grads[0].device)
    for g in grads:
        ga = g.to(acc)
        K.addmm_(ga, ga.T)
    return 0.5 * (K + K.T)
