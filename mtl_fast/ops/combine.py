"""Public ``combine``: the weighted sum d = Σ_t w_t J_t in one pass over J."""

from __future__ import annotations

import torch

from mtl_fast._core.dispatch import resolve
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast._core.validate import (
    NonFiniteError,
    all_finite,
    nonfinite_rows,
    refuse_nonfinite_weights,
    require_float,
    require_min_dim,
    require_same_device,
    require_tensor,
    should_check,
)


def combine(
    J: torch.Tensor,
    w: torch.Tensor,
    /,
    *,
    backend: str | None = None,
    check_finite: bool | None = None,
) -> torch.Tensor:
    """Combined direction d = Σ_t w_t J_t (= Jᵀw), batched over leading dimensions.

    Args:
        J: (..., T, P) per-task gradients, fp16/bf16/fp32/fp64.
        w: (..., T) weights with the same leading dimensions, any float dtype, on J's device.
        backend: "auto", "reference", "triton" or "cuda".
        check_finite: raise :class:`NonFiniteError` for NaN/Inf in w (naming the tasks), or in
            J when d comes out non-finite (naming J's offending tasks: the check reads d, P
            values, not J). ``None`` checks on the CPU and skips on a GPU (a host sync) and
            inside ``torch.compile``. Finite J and w whose sum overflows give ±Inf, as in
            torch.

    Returns:
        (..., P) in J's dtype, accumulated in fp32 (fp64 for fp64 J).

    Example:
        >>> import torch, mtl_fast
        >>> J = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> mtl_fast.combine(J, torch.tensor([0.5, 0.5]))
        tensor([0.5000, 1.0000])
    """
    J = require_tensor("J", J)
    w = require_tensor("w", w)
    require_float("J", J)
    require_float("w", w)
    require_min_dim("J", J, 2, "(..., T, P)")
    require_same_device("w", w, "J", J)
    T, P = J.shape[-2], J.shape[-1]
    if tuple(w.shape) != tuple(J.shape[:-1]):
        raise ValueError(
            f"w must have shape {tuple(J.shape[:-1])} (J's leading dims and T), "
            f"got {tuple(w.shape)}"
        )
    lead = J.shape[:-2]
    check = should_check(check_finite, J.device)
    if check:
        refuse_nonfinite_weights("weights w", w)
    if J.numel() == 0:
        return torch.zeros(*lead, P, dtype=J.dtype, device=J.device)
    fn = resolve("combine", backend, J.device)
    d: torch.Tensor = fn(J.reshape(-1, T, P), w.reshape(-1, T).to(accumulation_dtype(J.dtype)))
    if check and not all_finite(d):
        bad = nonfinite_rows(J)
        if bad:
            raise NonFiniteError("gradient J", bad)
    return d.reshape(*lead, P)
