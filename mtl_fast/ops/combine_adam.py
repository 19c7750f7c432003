"""Public ``combine_adam``: d = Σ_t w_t J_t and one ordinary Adam step with d, fused."""

from __future__ import annotations

import torch

from mtl_fast._core.adam_checks import check_hyper
from mtl_fast._core.contracts import AdamState
from mtl_fast._core.dispatch import resolve
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast._core.validate import (
    NonFiniteError,
    all_finite,
    nonfinite_rows,
    refuse_nonfinite_weights,
    require_float,
    require_same_device,
    require_tensor,
    should_check,
)


def _check_state(
    P: int,
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
) -> None:
    """(P,) contiguous param and moments of one dtype, three distinct buffers; (1,) fp32 step."""
    require_float("param", param, (torch.float32, torch.float64))
    for name, x in (("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if tuple(x.shape) != (P,) or not x.is_contiguous():
            raise ValueError(f"{name} must be a contiguous ({P},) tensor, got {tuple(x.shape)}")
        if x.dtype != param.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}, expected param's {param.dtype}")
    if P > 0:
        ptrs = {"param": param.data_ptr(), "exp_avg": exp_avg.data_ptr()}
        ptrs["exp_avg_sq"] = exp_avg_sq.data_ptr()
        if len(set(ptrs.values())) != 3:
            raise ValueError(f"param, exp_avg and exp_avg_sq must be distinct buffers, got {ptrs}")
    if tuple(step.shape) != (1,) or step.dtype != torch.float32:
        raise ValueError(
            f"step must be a (1,) float32 tensor, got {tuple(step.shape)} {step.dtype}"
        )


def combine_adam(
    J: torch.Tensor,
    w: torch.Tensor,
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: torch.Tensor,
    /,
    *,
    lr: float | torch.Tensor = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    backend: str | None = None,
    check_finite: bool | None = None,
) -> None:
    """The common MGDA case in one pass: combine the task gradients, then single-state Adam(W).

    Reads J, m, v, p once and writes m, v, p once on a fused backend (the reference forms d
    first). Updates ``param``, ``exp_avg``, ``exp_avg_sq`` and ``step`` in place (under
    ``torch.no_grad``, so ``param`` may be a Parameter). Every argument is checked first: a
    refused call changes nothing.

    Args:
        J: (T, P) per-task gradients of the flat shared parameters, T ≥ 1,
            fp16/bf16/fp32/fp64.
        w: (T,) float combination weights (e.g. from :func:`min_norm`), on param's device.
        param: (P,) flat shared parameters (e.g. ``MultiAdam.flat`` or
            :func:`flatten_parameters`), fp32 or fp64.
        exp_avg, exp_avg_sq: (P,) Adam moments in param's dtype (three distinct buffers).
        step: (1,) float32 step count (a device tensor, so the step can be graph-captured).
        lr, betas, eps, weight_decay: as torch.optim.AdamW (decoupled weight decay): lr, eps
            and weight_decay finite and ≥ 0, betas a pair in [0, 1). ``lr`` may be a 0-d float
            tensor on param's device (its value is checked on the CPU only).
        check_finite: raise :class:`NonFiniteError` naming the tasks whose row of J holds
            NaN/Inf (and refuse non-finite w), before anything is updated. ``None`` checks on
            the CPU and skips on a GPU (a host sync) and inside ``torch.compile``.
    """
    for name, x in (
        ("J", J),
        ("w", w),
        ("param", param),
        ("exp_avg", exp_avg),
        ("exp_avg_sq", exp_avg_sq),
        ("step", step),
    ):
        require_tensor(name, x)
        require_same_device(name, x, "param", param)
    require_float("J", J)
    require_float("w", w)
    if J.dim() != 2 or J.shape[0] == 0:
        raise ValueError(f"J must have shape (T, P) with T ≥ 1, got {tuple(J.shape)}")
    T, P = J.shape
    if tuple(w.shape) != (T,):
        raise ValueError(f"w must have shape ({T},), got {tuple(w.shape)}")
    _check_state(P, param, exp_avg, exp_avg_sq, step)
    hyper = check_hyper(lr, betas, eps, weight_decay, param.device, read_value=False)
    if should_check(check_finite, param.device):
        refuse_nonfinite_weights("weights w", w)
        bad = nonfinite_rows(J) if not all_finite(J) else []
        if bad:
            raise NonFiniteError("gradient J", bad, "nothing was updated")
    fn = resolve("combine_adam", backend, param.device)
    state = AdamState(param, exp_avg.view(1, P), exp_avg_sq.view(1, P), step)
    with torch.no_grad():
        fn(state, J, w.to(accumulation_dtype(J.dtype)), hyper)
