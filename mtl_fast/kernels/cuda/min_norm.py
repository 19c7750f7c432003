"""``min_norm`` on the CUDA extension (csrc/min_norm.cu): one warp per problem."""

from __future__ import annotations

import torch

# Scratch lives in shared memory up to T = 64 and in global memory (≈ 16·T² bytes per problem)
# beyond, up to this bound.
MAX_MIN_NORM_TASKS = 2048


def min_norm(K: torch.Tensor, /, *, max_iter: int, tol: float, sync_free: bool) -> torch.Tensor:
    """Min-norm weights on the simplex for K (B, T, T) fp32/fp64, T ≤ 2048 -> (B, T).

    The kernel never reads a value back to the host, whatever ``sync_free`` says: each warp
    stops on its own once its problem has converged (or after ``max_iter`` iterations).
    """
    T = K.shape[-1]
    if T > MAX_MIN_NORM_TASKS:
        raise ValueError(
            f"backend='cuda' min_norm supports T ≤ {MAX_MIN_NORM_TASKS} tasks (its scratch grows "
            f"as T²), got K with T = {T}; use backend='triton' or 'reference'"
        )
    out: torch.Tensor = torch.ops.mtl_fast_cuda.min_norm(K.contiguous(), max_iter, float(tol))
    return out
