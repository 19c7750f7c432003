"""Multi-state Adam over flat shared parameters, and the fused combine + single-state Adam step.

Each step is two launches and reads nothing back to the host, so it can be captured in a CUDA
graph with ``lr`` and the step counts as device tensors:

1. ``_adam_prep_kernel`` (one program): n_t ← n_t + 1 for the stepped tasks, then, in fp64 as
   the reference does, the per-task coefficient −lr·w_t/(1 − β1^n_t), √(1 − β2^n_t) and the
   decay factor 1 − lr·λ, with 1 − β1, β2, 1 − β2 and ε in the state dtype, into a tiny scratch
   buffer: the one place the streaming kernels read their scalars from.
2. The streaming kernel: one pass over the parameters; per element it reads p and, for each
   stepped task, g_t, m_t, v_t, and writes m_t, v_t and finally p (8 + 20|S| bytes in
   fp32). The combine + Adam kernel reads the T gradient rows instead of one, forms
   d = Σ_t w_t g_t in registers and steps a single (m, v).

The arithmetic follows :mod:`mtl_fast.kernels.reference.adam` operation by operation (lerp for m,
v·β2 + (1−β2)·g², √v / √bc2 + ε, the rounding of each update to the parameter's dtype), with
IEEE-rounded division and square root, so results agree with the reference to fp32 rounding.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from mtl_fast._core.contracts import AdamHyper, AdamRows, AdamState
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast.kernels.triton.combine import block_sizes
from mtl_fast.kernels.triton.common import INTERPRETED, TL_DTYPES, pow2, round_to

# Elements a program streams: 1024 at 4 warps is 8 a thread per tensor.
BLOCK = 1024


@triton.jit
def _adam_prep_kernel(
    STEP,
    TASKS,
    W,
    LR,
    SC,
    S,
    sw,
    lr_value: tl.float64,
    log_beta1: tl.float64,
    log_beta2: tl.float64,
    weight_decay: tl.float64,
    omb1_value: tl.float64,
    beta2_value: tl.float64,
    omb2_value: tl.float64,
    eps_value: tl.float64,
    BS: tl.constexpr,
    LR_IS_PTR: tl.constexpr,
    SINGLE: tl.constexpr,
    PARAM_DT: tl.constexpr,
    STATE_DT: tl.constexpr,
):
    i = tl.arange(0, BS)
    m = i < S
    if SINGLE:
        t = i
        w = tl.full((BS,), 1.0, tl.float64)
    else:
        t = tl.load(TASKS + i, mask=m, other=0)
        w = tl.load(W + i * sw, mask=m, other=0.0).to(tl.float64)
    n = tl.load(STEP + t, mask=m, other=0.0) + 1.0
    tl.store(STEP + t, n, mask=m)
    nd = n.to(tl.float64)
    if LR_IS_PTR:
        lr = tl.load(LR).to(tl.float64)
    else:
        lr = tl.full((), lr_value, tl.float64)
    bc1 = 1.0 - tl.exp(nd * tl.full((), log_beta1, tl.float64))
    bc2_sqrt = tl.sqrt(1.0 - tl.exp(nd * tl.full((), log_beta2, tl.float64)))
    coef = round_to(-lr / bc1 * w, PARAM_DT).to(STATE_DT)
    tl.store(SC + 5 + i, coef, mask=m)
    tl.store(SC + 5 + S + i, bc2_sqrt.to(STATE_DT), mask=m)
    decay = 1.0 - lr * tl.full((), weight_decay, tl.float64)
    tl.store(SC, round_to(decay, PARAM_DT).to(STATE_DT))
    tl.store(SC + 1, tl.full((), omb1_value, STATE_DT))
    tl.store(SC + 2, tl.full((), beta2_value, STATE_DT))
    tl.store(SC + 3, tl.full((), omb2_value, STATE_DT))
    tl.store(SC + 4, tl.full((), eps_value, STATE_DT))


@triton.jit
def _adam_moments(p, g, m, v, coef, bc2_sqrt, omb1, beta2, omb2, eps, LERP_LOW: tl.constexpr):
    """One task's m, v update and its direction added to p (all in the state dtype)."""
    if LERP_LOW:  # torch.lerp's two formulas, picked by the weight 1 − β1
        m = m + omb1 * (g - m)
    else:
        m = g - (g - m) * (1.0 - omb1)
    v = v * beta2 + omb2 * (g * g)
    if v.dtype == tl.float32:
        denom = tl.div_rn(tl.sqrt_rn(v), bc2_sqrt) + eps
        p = p + tl.div_rn(coef * m, denom)
    else:
        denom = tl.sqrt(v) / bc2_sqrt + eps
        p = p + coef * m / denom
    return p, m, v


@triton.jit
def _columns(P, BP: tl.constexpr):
    """This program's block of parameter columns (int64 offsets) and its in-bounds mask."""
    cols = tl.program_id(0).to(tl.int64) * BP + tl.arange(0, BP)
    return cols, cols < P


@triton.jit
def _param_and_hyper(PARAM, SC, cols, mask, WD_ON: tl.constexpr, STATE_DT: tl.constexpr):
    """p at ``cols`` in the state dtype, decayed by the factor SC[0] and rounded to the
    parameter's dtype (as the reference's in-place decay) when ``WD_ON``; and 1 − β1, β2, 1 − β2
    and ε in the state dtype (SC[1:5], from the prep kernel)."""
    p = tl.load(PARAM + cols, mask=mask, other=0.0).to(STATE_DT)
    if WD_ON:
        p = round_to(p * tl.load(SC), PARAM.dtype.element_ty).to(STATE_DT)
    omb1 = tl.load(SC + 1)
    beta2 = tl.load(SC + 2)
    omb2 = tl.load(SC + 3)
    eps = tl.load(SC + 4)
    return p, omb1, beta2, omb2, eps


@triton.jit
def _multi_adam_kernel(
    PARAM,
    G,
    GROWS,
    M,
    V,
    TASKS,
    SC,
    P,
    S,
    sg,
    sm,
    sv,
    BP: tl.constexpr,
    WD_ON: tl.constexpr,
    LERP_LOW: tl.constexpr,
    STATE_DT: tl.constexpr,
):
    cols, mask = _columns(P, BP)
    p, omb1, beta2, omb2, eps = _param_and_hyper(PARAM, SC, cols, mask, WD_ON, STATE_DT)
    p_dt = PARAM.dtype.element_ty
    for i in range(0, S):
        t = tl.load(TASKS + i).to(tl.int64)
        r = tl.load(GROWS + i).to(tl.int64)
        g = tl.load(G + r * sg + cols, mask=mask, other=0.0).to(STATE_DT)
        m = tl.load(M + t * sm + cols, mask=mask, other=0.0)
        v = tl.load(V + t * sv + cols, mask=mask, other=0.0)
        coef = tl.load(SC + 5 + i)
        bc2_sqrt = tl.load(SC + 5 + S + i)
        p, m, v = _adam_moments(p, g, m, v, coef, bc2_sqrt, omb1, beta2, omb2, eps, LERP_LOW)
        p = round_to(p, p_dt).to(STATE_DT)  # the reference rounds p after every task's update
        tl.store(M + t * sm + cols, m, mask=mask)
        tl.store(V + t * sv + cols, v, mask=mask)
    tl.store(PARAM + cols, round_to(p, p_dt), mask=mask)


@triton.jit
def _combine_adam_kernel(
    PARAM,
    J,
    W,
    M,
    V,
    SC,
    T,
    P,
    sj_t,
    sj_p,
    sw,
    BT: tl.constexpr,
    BP: tl.constexpr,
    WD_ON: tl.constexpr,
    LERP_LOW: tl.constexpr,
    ACC: tl.constexpr,
    STATE_DT: tl.constexpr,
):
    cols, mask = _columns(P, BP)
    d = tl.zeros((BP,), dtype=ACC)
    for t0 in range(0, T, BT):
        rows = t0 + tl.arange(0, BT)
        rmask = rows < T
        w = tl.load(W + rows * sw, mask=rmask, other=0.0).to(ACC)
        x = tl.load(
            J + rows.to(tl.int64)[:, None] * sj_t + cols[None, :] * sj_p,
            mask=rmask[:, None] & mask[None, :],
            other=0.0,
        ).to(ACC)
        d += tl.sum(x * w[:, None], axis=0)
    g = round_to(d, J.dtype.element_ty).to(STATE_DT)  # the reference's combine returns J's dtype
    p, omb1, beta2, omb2, eps = _param_and_hyper(PARAM, SC, cols, mask, WD_ON, STATE_DT)
    p_dt = PARAM.dtype.element_ty
    m = tl.load(M + cols, mask=mask, other=0.0)
    v = tl.load(V + cols, mask=mask, other=0.0)
    p, m, v = _adam_moments(
        p, g, m, v, tl.load(SC + 5), tl.load(SC + 6), omb1, beta2, omb2, eps, LERP_LOW
    )
    tl.store(M + cols, m, mask=mask)
    tl.store(V + cols, v, mask=mask)
    tl.store(PARAM + cols, round_to(p, p_dt), mask=mask)


def _log(beta: float) -> float:
    return math.log(beta) if beta > 0 else -math.inf


def _prep(
    state: AdamState, tasks: torch.Tensor | None, weights: torch.Tensor | None, hyper: AdamHyper
) -> torch.Tensor:
    """Launch the prep kernel; returns the scratch [decay, 1 − β1, β2, 1 − β2, ε, coef_0..,
    √bc2_0..] in the state dtype, all the streaming kernels take besides the tensors."""
    param, lr = state.param, hyper.lr
    S = 1 if tasks is None else tasks.shape[0]
    state_dtype = state.exp_avg.dtype
    sc = torch.empty(5 + 2 * S, dtype=state_dtype, device=param.device)
    lr_is_ptr = isinstance(lr, torch.Tensor) and lr.device == param.device
    lr_value = 0.0 if lr_is_ptr else float(lr)
    _adam_prep_kernel[(1,)](
        state.step,
        sc if tasks is None else tasks,
        sc if weights is None else weights,
        lr if lr_is_ptr else sc,
        sc,
        S,
        0 if weights is None else weights.stride(0),
        lr_value,
        _log(hyper.beta1),
        _log(hyper.beta2),
        float(hyper.weight_decay),
        *_hyper(hyper),
        BS=pow2(S),
        LR_IS_PTR=lr_is_ptr,
        SINGLE=tasks is None,
        PARAM_DT=TL_DTYPES[param.dtype],
        STATE_DT=TL_DTYPES[state_dtype],
        num_warps=1,
    )
    return sc


def _hyper(hyper: AdamHyper) -> tuple[float, float, float, float]:
    # 1 − β is formed in fp64 on the host, as the reference's Python floats are; forming it
    # from an fp32 β on the device would be off by up to 5e-5 relative for β2 = 0.999.
    return 1.0 - hyper.beta1, hyper.beta2, 1.0 - hyper.beta2, hyper.eps


def multi_adam(state: AdamState, rows: AdamRows, hyper: AdamHyper, /) -> None:
    """One multi-state Adam step in place; the calling convention of the reference's."""
    param, exp_avg, exp_avg_sq = state.param, state.exp_avg, state.exp_avg_sq
    for name, x in (("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if x.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous along the parameters (stride 1)")
    tasks = rows.tasks.contiguous()
    grad_rows = rows.grad_rows.contiguous()
    grads = rows.grads
    if grads.stride(1) != 1:
        grads = grads.contiguous()
    sc = _prep(state, tasks, rows.weights, hyper)
    P = param.numel()
    bp = 4 * BLOCK if INTERPRETED else BLOCK
    _multi_adam_kernel[(triton.cdiv(P, bp),)](
        param,
        grads,
        grad_rows,
        exp_avg,
        exp_avg_sq,
        tasks,
        sc,
        P,
        tasks.shape[0],
        grads.stride(0),
        exp_avg.stride(0),
        exp_avg_sq.stride(0),
        BP=bp,
        WD_ON=hyper.weight_decay != 0,
        LERP_LOW=1.0 - hyper.beta1 < 0.5,
        STATE_DT=TL_DTYPES[exp_avg.dtype],
        num_warps=4,
    )


def combine_adam(state: AdamState, J: torch.Tensor, w: torch.Tensor, hyper: AdamHyper, /) -> None:
    """d = Σ_t w_t J_t and one single-state Adam(W) step with it, in one pass over J, m, v, p."""
    sc = _prep(state, None, None, hyper)
    T, P = J.shape
    bt, bp = block_sizes(T)
    _combine_adam_kernel[(triton.cdiv(P, bp),)](
        state.param,
        J,
        w,
        state.exp_avg,
        state.exp_avg_sq,
        sc,
        T,
        P,
        J.stride(0),
        J.stride(1),
        w.stride(0),
        BT=bt,
        BP=bp,
        WD_ON=hyper.weight_decay != 0,
        LERP_LOW=1.0 - hyper.beta1 < 0.5,
        ACC=TL_DTYPES[accumulation_dtype(J.dtype)],
        STATE_DT=TL_DTYPES[state.exp_avg.dtype],
        num_warps=4,
    )
