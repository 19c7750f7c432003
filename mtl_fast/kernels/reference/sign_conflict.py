"""Reference fraction of coordinates on which two task gradients have opposite signs."""

from __future__ import annotations

import torch

# Coordinates per chunk: the ±1/0 sign matrices are multiplied in fp32, where integer counts
# are exact up to 2^24, so each chunk stays below that and the chunks are summed in fp64.
_CHUNK = 1 << 22


def sign_conflict(J: torch.Tensor, /) -> torch.Tensor:
    """C[b, i, j] = |{p : sign(J[b, i, p]) · sign(J[b, j, p]) < 0}| / P.

    One read of J per chunk: with S = sign(J) ∈ {−1, 0, 1} and N = |S|, the number of
    coordinates where both are non-zero is (N Nᵀ)_ij and the signed agreement is (S Sᵀ)_ij, so the
    count of opposite signs is ((N Nᵀ) − (S Sᵀ)) / 2. Zero coordinates never count as conflicts.

    Args:
        J: (B, T, P) floating tensor with P ≥ 1.

    Returns:
        (B, T, T) fp64 fractions in [0, 1]: symmetric, zero diagonal.
    """
    B, T, P = J.shape
    pos = torch.zeros(B, T, T, dtype=torch.float64, device=J.device)
    for start in range(0, P, _CHUNK):
        S = torch.sign(J[..., start : start + _CHUNK]).to(torch.float32)
        N = S.abs()
        both = N @ N.transpose(-1, -2)
        agree = S @ S.transpose(-1, -2)
        pos += ((both - agree) * 0.5).to(torch.float64)
    return pos / P
