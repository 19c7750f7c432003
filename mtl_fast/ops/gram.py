"""Public ``gram``: the T×T Gram matrix of per-task gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_fast._core.dispatch import resolve
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast._core.validate import (
    NonFiniteError,
    require_float,
    require_min_dim,
    require_same_device,
    require_tensor,
    should_check,
)


def gram(
    J: torch.Tensor | Sequence[torch.Tensor],
    /,
    *,
    backend: str | None = None,
    check_finite: bool | None = None,
) -> torch.Tensor:
    """Gram matrix K = J Jᵀ of per-task gradients.

    Args:
        J: (..., T, P) tensor whose row t is task t's flattened gradient, or a non-empty
            list of per-parameter gradients, each shaped (T, *param_shape), all of one dtype
            and device (the Gram Σ_p G_p G_pᵀ is formed without concatenating them).
            fp16, bf16, fp32 or fp64.
        backend: "auto" (default, or ``MTL_FAST_BACKEND``), "reference", "triton" or "cuda".
        check_finite: raise :class:`NonFiniteError` naming the tasks whose gradient is NaN/Inf.
            ``None`` checks on the CPU and skips on a GPU, where it would cost a host sync.

    Returns:
        (..., T, T) symmetric PSD, fp32 (fp64 for fp64 input).

    Example:
        >>> import torch, mtl_fast
        >>> J = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
        >>> mtl_fast.gram(J)
        tensor([[1., 1.],
                [1., 2.]])
    """
    if isinstance(J, (list, tuple)):
        K = _gram_list(list(J), backend)
    else:
        J = require_tensor("J", J)
        require_float("J", J)
        require_min_dim("J", J, 2, "(..., T, P)")
        T, P = J.shape[-2], J.shape[-1]
        if T == 0:
            raise ValueError(f"J must have at least one task (T ≥ 1), got shape {tuple(J.shape)}")
        lead = J.shape[:-2]
        if P == 0 or J.numel() == 0:
            K = torch.zeros(*lead, T, T, dtype=accumulation_dtype(J.dtype), device=J.device)
        else:
            J3 = J.reshape(-1, T, P)
            K = resolve("gram", backend, J.device)(J3).reshape(*lead, T, T)
    if should_check(check_finite, K.device):
        diag = K.diagonal(dim1=-2, dim2=-1).reshape(-1, K.shape[-1])
        bad = (~torch.isfinite(diag)).any(dim=0)
        if bool(bad.any()):
            raise NonFiniteError("gradient", torch.nonzero(bad).flatten().tolist())
    return K


def _gram_list(grads: list[torch.Tensor], backend: str | None) -> torch.Tensor:
    if not grads:
        raise ValueError("J is an empty list: pass at least one per-parameter gradient")
    first = require_tensor("J[0]", grads[0])
    require_float("J[0]", first)
    require_min_dim("J[0]", first, 1, "(T, *param_shape)")
    T = first.shape[0]
    if T == 0:
        raise ValueError("J[0] must have at least one task (T ≥ 1) in its first dimension")
    flat = []
    for i, g in enumerate(grads):
        g = require_tensor(f"J[{i}]", g)
        require_min_dim(f"J[{i}]", g, 1, "(T, *param_shape)")
        if g.shape[0] != T:
            raise ValueError(f"J[{i}] has {g.shape[0]} tasks in dim 0, but J[0] has {T}")
        if g.dtype != first.dtype:
            raise TypeError(f"J[{i}] has dtype {g.dtype}, but J[0] has {first.dtype}")
        require_same_device(f"J[{i}]", g, "J[0]", first)
        if g[0].numel() > 0:
            flat.append(g.reshape(T, -1))
    if not flat:
        return torch.zeros(T, T, dtype=accumulation_dtype(first.dtype), device=first.device)
    out: torch.Tensor = resolve("gram_list", backend, first.device)(flat)
    return out
