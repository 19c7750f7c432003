"""``multi_adam`` and ``combine_adam`` on the CUDA extension (csrc/adam.cu)."""

from __future__ import annotations

from typing import Any

import torch

from mtl_fast._core.contracts import AdamHyper, AdamRows, AdamState


def _lr_args(lr: float | torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor | None, float]:
    if isinstance(lr, torch.Tensor):
        return lr.to(device=like.device, dtype=torch.float64).reshape(1), 0.0
    return None, float(lr)


def scalars(hyper: AdamHyper, like: torch.Tensor) -> tuple[Any, ...]:
    """The op schema's trailing scalars: lr tensor, lr value, beta1, beta2, eps, weight decay."""
    lr_tensor, lr_value = _lr_args(hyper.lr, like)
    b1, b2, eps, wd = float(hyper.beta1), float(hyper.beta2), float(hyper.eps), hyper.weight_decay
    return lr_tensor, lr_value, b1, b2, eps, float(wd)


def multi_adam_inputs(
    state: AdamState, rows: AdamRows
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grads, grad_rows and tasks as the extension's multi_adam takes them: contiguous, the
    indices int64, grads whose dtype is neither param's nor the states' cast to the states'.
    The state tensors must be contiguous already (they are updated in place)."""
    for name, x in vars(state).items():
        if not x.is_contiguous():
            raise ValueError(f"{name} must be contiguous for backend='cuda' (updated in place)")
    grads = rows.grads
    if grads.dtype not in (state.param.dtype, state.exp_avg.dtype):
        grads = grads.to(state.exp_avg.dtype)
    return (
        grads.contiguous(),
        rows.grad_rows.to(torch.int64).contiguous(),
        rows.tasks.to(torch.int64).contiguous(),
    )


def combine_adam_inputs(
    param: torch.Tensor, J: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """J and w as the extension's combine_adam takes them: contiguous, and cast to param's dtype
    where the kernels have no such pair (fp64 param with other J, fp32 param with fp64 J)."""
    if param.dtype == torch.float64 and J.dtype != torch.float64:
        J, w = J.to(torch.float64), w.to(torch.float64)
    elif param.dtype == torch.float32 and J.dtype == torch.float64:
        J, w = J.to(torch.float32), w.to(torch.float32)
    return J.contiguous(), w.contiguous()


def multi_adam(state: AdamState, rows: AdamRows, hyper: AdamHyper, /) -> None:
    """One multi-state Adam step in place (the calling convention of the reference's).

    The state tensors must be contiguous (they are updated in place); grads whose dtype is
    neither param's nor the states' is cast to the states' dtype first.
    """
    grads, grad_rows, tasks = multi_adam_inputs(state, rows)
    torch.ops.mtl_fast_cuda.multi_adam(
        state.param,
        grads,
        grad_rows,
        state.exp_avg,
        state.exp_avg_sq,
        state.step,
        tasks,
        rows.weights.contiguous(),
        *scalars(hyper, state.param),
    )


def combine_adam(state: AdamState, J: torch.Tensor, w: torch.Tensor, hyper: AdamHyper, /) -> None:
    """d = Σ_t w_t J_t and one single-state Adam(W) step with d, fused, in place.

    param (P,) and the one-row state fp32 or fp64; J: (T, P) fp16/bf16/fp32 for fp32 param (any
    other combination is cast to param's dtype first); w: (T,) in J's accumulation dtype.
    """
    J, w = combine_adam_inputs(state.param, J, w)
    torch.ops.mtl_fast_cuda.combine_adam(
        state.param,
        J,
        w,
        state.exp_avg.view(-1),
        state.exp_avg_sq.view(-1),
        state.step,
        *scalars(hyper, state.param),
    )
