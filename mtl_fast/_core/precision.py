"""The precision rules, each stated once: which dtype an op accumulates in, and how far a backend
may be from the float64 truth.

Tolerance rule (flash-attention's): compute the truth in float64 from the very inputs the backend
sees (already rounded to the dtype under test); a backend's error may be at most twice the
reference's own error at the same dtype plus a small absolute term :data:`ATOL`. It scales with
the reduction length by itself. Errors are relative to the largest magnitude of the truth.
"""

from __future__ import annotations

import torch

# Relative error allowed on top of 2× the reference's own error, by dtype of the input.
ATOL: dict[torch.dtype, float] = {
    torch.float64: 1e-12,
    torch.float32: 1e-5,
    torch.float16: 1e-5,  # inputs are rounded first; accumulation is fp32
    torch.bfloat16: 1e-5,
}
# Objective excess of min-norm weights over the float64 optimum, relative to max K_ii.
MIN_NORM_TOL = 1e-6
# Relative error of an Adam step's parameters and states against the float64 formula.
ADAM_TOL = 1e-5
# Error of a Gram-space aggregator's coefficients against the float64 reference on the same
# (rounded) K, relative to max(1, max|c|), by the dtype of K: every backend computes in fp64, so
# fp32 output is off by its own rounding (6e-8) plus solver differences; the iterative solvers
# (CAGrad, Nash-MTL) stop at the same tolerances (gap 1e-12, Newton decrement 1e-10), where
# their answers agree to 1e-10 or better (tests/ops/test_aggregators.py).
AGGREGATOR_TOL: dict[torch.dtype, float] = {torch.float64: 1e-8, torch.float32: 1e-5}
# Dual-cone projection weights (UPGrad, DualProj): per-row error relative to the row's largest
# weight, against the float64 reference on the same (rounded) Gram, by output dtype; in fp64 also
# the KKT residual. Every backend solves the QP exactly in fp64 (1e-13 from quadprog measured),
# the stopping rule allows ~1e-10, and an fp32 output is rounded at 6e-8.
DUAL_CONE_TOL: dict[torch.dtype, float] = {torch.float64: 1e-9, torch.float32: 1e-6}


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 for fp64 input, fp32 for fp32/fp16/bf16: what Grams, sums and Adam states use."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def relative_error(x: torch.Tensor, truth: torch.Tensor) -> float:
    """max |x − truth| / max |truth| (the absolute error when the truth is all zeros)."""
    if truth.numel() == 0:
        return 0.0
    scale = truth.abs().max().item()
    err = (x.double() - truth.double()).abs().max().item()
    return float(err / scale if scale > 0 else err)


def tolerance(ref_err: float, dtype: torch.dtype, out_dtype: torch.dtype | None = None) -> float:
    """What a backend's relative error may be, given the reference's own error ``ref_err`` at
    input dtype ``dtype``: 2·ref_err + ATOL, plus half an ulp when the output is fp16/bf16
    (rounding the result itself). The reference is held to ``tolerance(0.0, ...)``."""
    atol = ATOL[dtype]
    if out_dtype is not None and out_dtype in (torch.float16, torch.bfloat16):
        atol += torch.finfo(out_dtype).eps / 2
    return 2 * ref_err + atol
