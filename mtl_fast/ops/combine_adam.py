"""Public ``combine_adam``: d = Σ_t w_t J_t and one ordinary Adam step with d, fused."""

from __future__ import annotations

import torch

from mtl_fast._core.contracts import AdamHyper, AdamState
from mtl_fast._core.dispatch import resolve
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast._core.validate import require_float, require_same_device, require_tensor


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
) -> None:
    """The common MGDA case in one pass: combine the task gradients, then single-state Adam(W).

    Reads J, m, v, p once and writes m, v, p once on a fused backend (the reference forms d
    first). Updates ``param``, ``exp_avg``, ``exp_avg_sq`` and ``step`` in place.

    Args:
        J: (T, P) per-task gradients of the flat shared parameters.
        w: (T,) combination weights (e.g. from :func:`min_norm`).
        param: (P,) flat shared parameters (e.g. ``MultiAdam.flat`` or
            :func:`flatten_parameters`), fp32 or fp64.
        exp_avg, exp_avg_sq: (P,) Adam moments in param's dtype.
        step: (1,) float32 step count (a device tensor, so the step can be graph-captured).
        lr, betas, eps, weight_decay: as torch.optim.AdamW (decoupled weight decay).
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
    require_float("param", param, (torch.float32, torch.float64))
    if J.dim() != 2:
        raise ValueError(f"J must have shape (T, P), got {tuple(J.shape)}")
    T, P = J.shape
    if tuple(w.shape) != (T,):
        raise ValueError(f"w must have shape ({T},), got {tuple(w.shape)}")
    for name, x in (("param", param), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)):
        if tuple(x.shape) != (P,) or not x.is_contiguous():
            raise ValueError(f"{name} must be a contiguous ({P},) tensor, got {tuple(x.shape)}")
        if x.dtype != param.dtype:
            raise TypeError(f"{name} has dtype {x.dtype}, expected param's {param.dtype}")
    if tuple(step.shape) != (1,) or step.dtype != torch.float32:
        raise ValueError(
            f"step must be a (1,) float32 tensor, got {tuple(step.shape)} {step.dtype}"
        )
    fn = resolve("combine_adam", backend, param.device)
    hyper = AdamHyper(lr, betas[0], betas[1], eps, weight_decay)
    state = AdamState(param, exp_avg.view(1, P), exp_avg_sq.view(1, P), step)
    fn(state, J, w.to(accumulation_dtype(J.dtype)), hyper)
