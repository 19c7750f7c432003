"""Combine d = Σ_t w_t J_t in one pass over J (fp32 accumulation, fp64 for fp64 J)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mtl_fast._core.precision import accumulation_dtype
from mtl_fast.kernels.triton.common import INTERPRETED, TL_DTYPES, pow2, round_to


@triton.jit
def _combine_kernel(
    J,
    W,
    D,
    T,
    P,
    n_blocks,
    sj_b,
    sj_t,
    sj_p,
    sw_b,
    sw_t,
    sd_b,
    BT: tl.constexpr,
    BP: tl.constexpr,
    ACC: tl.constexpr,
):
    # A flat grid (no 65 535 limit on either B or the number of column blocks).
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_blocks
    cols = (pid % n_blocks) * BP + tl.arange(0, BP).to(tl.int64)
    cmask = cols < P
    acc = tl.zeros((BP,), dtype=ACC)
    for t0 in range(0, T, BT):
        rows = t0 + tl.arange(0, BT)
        rmask = rows < T
        w = tl.load(W + b * sw_b + rows * sw_t, mask=rmask, other=0.0).to(ACC)
        x = tl.load(
            J + b * sj_b + rows.to(tl.int64)[:, None] * sj_t + cols[None, :] * sj_p,
            mask=rmask[:, None] & cmask[None, :],
            other=0.0,
        ).to(ACC)
        acc += tl.sum(x * w[:, None], axis=0)
    tl.store(D + b * sd_b + cols, round_to(acc, D.dtype.element_ty), mask=cmask)


def block_sizes(T: int) -> tuple[int, int]:
    """(rows, columns) of one J tile: 16 rows × 512 columns keep 64 values a thread at 4 warps."""
    bt = min(pow2(T), 16)
    return bt, 4096 if INTERPRETED else min(8192 // bt, 1024)


def combine(J: torch.Tensor, w: torch.Tensor, /) -> torch.Tensor:
    """d[b] = Σ_t w[b, t] J[b, t] for (B, T, P) J and (B, T) w; (B, P) in J's dtype."""
    B, T, P = J.shape
    D = torch.empty(B, P, dtype=J.dtype, device=J.device)
    bt, bp = block_sizes(T)
    n_blocks = triton.cdiv(P, bp)
    _combine_kernel[(B * n_blocks,)](
        J,
        w,
        D,
        T,
        P,
        n_blocks,
        J.stride(0),
        J.stride(1),
        J.stride(2),
        w.stride(0),
        w.stride(1),
        D.stride(0),
        BT=bt,
        BP=bp,
        ACC=TL_DTYPES[accumulation_dtype(J.dtype)],
        num_warps=4,
    )
    return D
