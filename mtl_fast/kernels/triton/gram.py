"""Gram matrix K = J Jᵀ: a persistent split-K reduction over P, then a deterministic reduce.

Stage 1 (``_gram_partial_kernel``): program (b, tile pair, split) reads the columns
``[split·chunk, (split+1)·chunk)`` of rows tile ti and tile tj of J[b] once and accumulates their
(BT × BT) block of J Jᵀ in fp32 (fp64 for fp64 J), written to its own slot of a workspace. The
number of splits is chosen so that about ``PROGRAMS_PER_SM`` programs run per SM whatever B, T
and P are. Stage 2 (``_gram_reduce_kernel``) sums the splits in a fixed order and writes both
the block and its transpose, so the result is bitwise symmetric and bitwise reproducible: no
atomics anywhere.

Two inner products, picked per (T, dtype):
- T ≤ 8: each thread keeps its columns' T×T outer products in registers (a 3-D accumulator)
  and reduces across threads once at the end. Exact fp32 FMAs; nothing padded beyond the next
  power of two, so T = 2 or 3 does 4 or 16 FMAs per column, not 256.
- T > 8: ``tl.dot`` on tiles of BT = 16, 32 or 64 rows. bf16/fp16 go to the tensor cores with
  exact products and fp32 accumulation; fp32 uses ``input_precision=FP32_PRECISION``, "tf32x3"
  by default: three TF32 products per term, about 2⁻²¹ relative error per product, well inside
  the fp32 tolerance of ``mtl-fast verify`` and never plain (1-pass) TF32, which is not. "ieee"
  (CUDA-core FMAs) is the exact alternative. fp64 uses "ieee".

Offsets are 64-bit (T·P > 2³¹ elements is fine); rows and columns may be strided.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from mtl_fast._core.precision import accumulation_dtype
from mtl_fast.kernels.triton.common import INTERPRETED, PROGRAMS_PER_SM, TL_DTYPES, pow2, sm_count

FP32_PRECISION = os.environ.get("MTL_FAST_GRAM_FP32_PRECISION", "tf32x3")
if FP32_PRECISION not in ("tf32x3", "ieee"):
    raise ValueError(
        f"MTL_FAST_GRAM_FP32_PRECISION must be 'tf32x3' or 'ieee', got {FP32_PRECISION!r}"
    )

# Largest row tile: a 64×64 fp32 accumulator is 32 registers a thread at 4 warps.
MAX_TILE = 64
# Largest T handled by the register outer-product path (T² accumulators per column a thread).
OUTER_MAX_T = 8


@triton.jit
def _gram_partial_kernel(
    J,
    WS,
    T,
    P,
    stride_b,
    stride_t,
    stride_p,
    ws_stride_b,
    ws_splits,
    split_offset,
    chunk,
    TILES: tl.constexpr,
    BT: tl.constexpr,
    BP: tl.constexpr,
    USE_DOT: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    ACC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pair = tl.program_id(1)
    split = tl.program_id(2).to(tl.int64)
    ti = pair // TILES
    tj = pair % TILES
    start = split * chunk
    end = tl.minimum(start + chunk, P)
    end = tl.where(ti <= tj, end, start)  # the lower triangle of tiles is the transpose: no work
    r = tl.arange(0, BT)
    rows_a = ti * BT + r
    rows_b = tj * BT + r
    base = J + b * stride_b
    off_a = rows_a.to(tl.int64) * stride_t
    off_b = rows_b.to(tl.int64) * stride_t
    cols0 = tl.arange(0, BP).to(tl.int64)
    if USE_DOT:
        acc = tl.zeros((BT, BT), dtype=ACC)
    else:
        acc3 = tl.zeros((BT, BT, BP), dtype=ACC)
    for p0 in range(start, end, BP):
        # Splits start at multiples of BP (chunk is one): tell the compiler, for wide loads.
        cols = tl.multiple_of(p0, BP) + cols0
        cmask = cols < end
        xa = tl.load(
            base + off_a[:, None] + cols[None, :] * stride_p,
            mask=(rows_a < T)[:, None] & cmask[None, :],
            other=0.0,
        )
        if TILES == 1:
            xb = xa
        else:
            xb = tl.load(
                base + off_b[:, None] + cols[None, :] * stride_p,
                mask=(rows_b < T)[:, None] & cmask[None, :],
                other=0.0,
            )
        if UPCAST:  # the interpreter's dot cannot take bf16 (exact in fp32 all the same)
            xa = xa.to(tl.float32)
            xb = xb.to(tl.float32)
        if USE_DOT:
            acc = tl.dot(xa, tl.trans(xb), acc, input_precision=PRECISION, out_dtype=ACC)
        else:
            xa = xa.to(ACC)
            xb = xb.to(ACC)
            acc3 += xa[:, None, :] * xb[None, :, :]
    if not USE_DOT:
        acc = tl.sum(acc3, axis=2)
    slot = WS + b * ws_stride_b + (pair.to(tl.int64) * ws_splits + split_offset + split) * (BT * BT)
    # Only the upper triangle of tiles stores. The test is a row bound, not mask=ti <= tj:
    # Triton 3.9's interpreter fails on a scalar mask broadcast to a block ("mask has
    # unsupported dtype": it splats the comparison as int32, which older interpreters cast to
    # bool). The same elements are stored, and ptxas for sm_90
    # (python -m mtl_fast.kernels.triton.aot)
    # reports the same registers and spills for every specialization of this kernel, with the
    # same PTX instruction mix: no change in results or speed on a GPU.
    row_end = tl.where(ti <= tj, BT, 0)
    tl.store(slot + r[:, None] * BT + r[None, :], acc, mask=(r < row_end)[:, None])


@triton.jit
def _gram_reduce_kernel(
    WS,
    K,
    T,
    n_splits,
    ws_stride_b,
    k_stride_b,
    TILES: tl.constexpr,
    BT: tl.constexpr,
    ACC: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    pair = tl.program_id(1)
    ti = pair // TILES
    tj = pair % TILES
    r = tl.arange(0, BT)
    tile = r[:, None] * BT + r[None, :]
    base = WS + b * ws_stride_b + pair.to(tl.int64) * n_splits * (BT * BT)
    acc = tl.zeros((BT, BT), dtype=ACC)
    if ti <= tj:
        for s in range(0, n_splits):  # a fixed order: the same bits every run
            acc += tl.load(base + s * (BT * BT) + tile)
    acc = tl.where(ti == tj, 0.5 * (acc + tl.trans(acc)), acc)
    rows = ti * BT + r
    cols = tj * BT + r
    # The lower triangle of tiles stores nothing: a column bound, not a scalar mask term (see
    # _gram_partial_kernel). For sm_90: no spills, registers within ±2 of the scalar mask.
    col_end = tl.where(ti <= tj, T, 0)
    mask = (rows < T)[:, None] & (cols < col_end)[None, :]
    out = K + b * k_stride_b
    tl.store(out + rows[:, None] * T + cols[None, :], acc, mask=mask)
    tl.store(out + cols[None, :] * T + rows[:, None], acc, mask=mask)


class _Plan:
    """Tile and block sizes for one (T, dtype)."""

    def __init__(self, T: int, dtype: torch.dtype) -> None:
        self.use_dot = T > OUTER_MAX_T
        if self.use_dot:
            self.bt = min(max(pow2(T), 16), MAX_TILE)
            # Column blocks and warps without register spills, from ptxas for sm_90
            # (python -m mtl_fast.kernels.triton.aot): fp32 32-row tiles spill at 64 columns (tf32x3
            # holds three operand copies), 64-row tiles spill at 4 warps.
            if dtype in (torch.float16, torch.bfloat16) and self.bt <= 32:
                self.bp = 128
            elif dtype == torch.float32 and self.bt == 32:
                self.bp = 32
            else:
                self.bp = 64
            self.num_warps = 8 if self.bt == 64 else 4
        else:
            self.bt = pow2(T)
            # The 3-D accumulator holds BT²·BP/(32·warps) values a thread: 64 at 4 warps.
            self.bp = min(8192 // (self.bt * self.bt), 1024)
            self.num_warps = 4
        if INTERPRETED:  # fewer, larger steps: the interpreter pays per operation, not per byte
            self.bp = max(self.bp, 1024)
        self.tiles = triton.cdiv(T, self.bt)
        self.precision = FP32_PRECISION if self.use_dot and dtype == torch.float32 else "ieee"
        self.upcast = INTERPRETED and self.use_dot and dtype == torch.bfloat16
        self.acc_dtype = accumulation_dtype(dtype)
        self.acc = TL_DTYPES[self.acc_dtype]

    def splits(self, n: int, work_items: int, device: torch.device) -> int:
        """Splits of n columns so that the launch fills the GPU (≥ 1 block of BP each)."""
        want = max(1, PROGRAMS_PER_SM * sm_count(device) // max(work_items, 1))
        return max(1, min(want, triton.cdiv(n, self.bp)))


def _launch_partial(
    plan: _Plan,
    J: torch.Tensor,
    ws: torch.Tensor,
    split_offset: int,
    n_splits: int,
) -> None:
    """Stage 1 on a (B, T, n) tensor into splits [split_offset, split_offset + n_splits)."""
    B, T, n = J.shape
    chunk = triton.cdiv(triton.cdiv(n, n_splits), plan.bp) * plan.bp
    grid = (B, plan.tiles * plan.tiles, n_splits)
    _gram_partial_kernel[grid](
        J,
        ws,
        T,
        n,
        J.stride(0),
        J.stride(1),
        J.stride(2),
        ws.stride(0),
        ws.shape[2],
        split_offset,
        chunk,
        TILES=plan.tiles,
        BT=plan.bt,
        BP=plan.bp,
        USE_DOT=plan.use_dot,
        PRECISION=plan.precision,
        UPCAST=plan.upcast,
        ACC=plan.acc,
        num_warps=plan.num_warps,
    )


def _launch_reduce(plan: _Plan, ws: torch.Tensor, K: torch.Tensor, T: int) -> None:
    B = K.shape[0]
    n_splits = ws.shape[2]
    _gram_reduce_kernel[(B, plan.tiles * plan.tiles)](
        ws,
        K,
        T,
        n_splits,
        ws.stride(0),
        K.stride(0),
        TILES=plan.tiles,
        BT=plan.bt,
        ACC=plan.acc,
        num_warps=4,
    )


def _workspace(plan: _Plan, B: int, n_splits: int, device: torch.device) -> torch.Tensor:
    pairs = plan.tiles * plan.tiles  # the lower-triangle slots are never written nor read
    return torch.empty(B, pairs, n_splits, plan.bt, plan.bt, dtype=plan.acc_dtype, device=device)


def gram(J: torch.Tensor, /) -> torch.Tensor:
    """K[b] = J[b] J[b]ᵀ for a (B, T, P) tensor of any strides; (B, T, T) fp32 (fp64 for fp64)."""
    B, T, P = J.shape
    plan = _Plan(T, J.dtype)
    pairs = plan.tiles * (plan.tiles + 1) // 2
    n_splits = plan.splits(P, B * pairs, J.device)
    ws = _workspace(plan, B, n_splits, J.device)
    _launch_partial(plan, J, ws, 0, n_splits)
    K = torch.empty(B, T, T, dtype=accumulation_dtype(J.dtype), device=J.device)
    _launch_reduce(plan, ws, K, T)
    return K


def _adjacent_columns(grads: Sequence[torch.Tensor]) -> torch.Tensor | None:
    """One (T, Σn) strided view when the blocks are consecutive column slices of one matrix.

    That is what :meth:`mtl_fast.TaskGradients.per_parameter` returns: then one launch covers
    every block, with no copy.
    """
    first = grads[0]
    row_stride = first.stride(0)
    ptr = first.data_ptr()
    size = first.element_size()
    total = 0
    for g in grads:
        if g.stride(1) != 1 or (g.shape[0] > 1 and g.stride(0) != row_stride):
            return None
        if g.data_ptr() != ptr + total * size:
            return None
        total += g.shape[1]
    return first.as_strided((first.shape[0], total), (row_stride, 1))


def gram_list(grads: Sequence[torch.Tensor], /) -> torch.Tensor:
    """K = Σ_p G_p G_pᵀ over (T, n_p) blocks of one dtype and device, never concatenated.

    Adjacent column slices of one matrix run as a single strided launch; other lists run one
    stage-1 launch per block into disjoint splits of one workspace, then one reduce.
    """
    view = _adjacent_columns(grads)
    if view is not None:
        return gram(view.unsqueeze(0)).squeeze(0)
    first = grads[0]
    T = first.shape[0]
    plan = _Plan(T, first.dtype)
    pairs = plan.tiles * (plan.tiles + 1) // 2
    sizes = [g.shape[1] for g in grads]
    total = sum(sizes)
    budget = PROGRAMS_PER_SM * sm_count(first.device) // pairs
    splits = [max(1, min(round(budget * n / total), triton.cdiv(n, plan.bp))) for n in sizes]
    ws = _workspace(plan, 1, sum(splits), first.device)
    offset = 0
    for g, s in zip(grads, splits):
        _launch_partial(plan, g.unsqueeze(0), ws, offset, s)
        offset += s
    K = torch.empty(1, T, T, dtype=accumulation_dtype(first.dtype), device=first.device)
    _launch_reduce(plan, ws, K, T)
    return K.squeeze(0)
