"""Gradient diagnostics of Elich et al., "Examining Common Paradigms in Multi-Task Learning".

Everything except the sign-conflict fraction comes from the T×T Gram K = J Jᵀ of the per-task
gradients, which the MGDA strategies build anyway, so it costs no extra backward pass:

- cosine similarity  cos_ij = K_ij / sqrt(K_ii K_jj)   (a conflict when < 0);
- magnitude similarity  mag_ij = 2 sqrt(K_ii K_jj) / (K_ii + K_jj)   (1 for equal norms, → 0
  when one gradient dwarfs the other);
- the fraction of coordinates with opposite signs (one extra pass over J);
- the path length Σ_k ‖θ_k − θ_{k−1}‖ of the shared parameters.

Their finding: direction conflicts between tasks are no larger than those between samples of one
task; *magnitude* differences are what set tasks apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from mtl_fast._core.dispatch import resolve
from mtl_fast._core.validate import (
    NonFiniteError,
    all_finite,
    nonfinite_rows,
    refuse_nonfinite_gram,
    require_choice,
    require_float,
    require_min_dim,
    require_positive_int,
    require_real,
    require_same_device,
    require_tensor,
    should_check,
)

__all__ = [
    "GradientDiagnostics",
    "PathLength",
    "cosine_similarity",
    "gradient_diagnostics",
    "magnitude_similarity",
    "sign_conflict",
]


def _check_gram(K: torch.Tensor, check_finite: bool | None) -> torch.Tensor:
    """K as a float (..., T, T) tensor in fp32/fp64; NaN/Inf refused where checked (the CPU by
    default). Unchecked, a non-finite entry gives NaN in the result, never a finite value."""
    K = require_tensor("K", K)
    require_float("K", K)
    require_min_dim("K", K, 2, "(..., T, T)")
    if K.shape[-1] != K.shape[-2]:
        raise ValueError(f"K must have shape (..., T, T), got {tuple(K.shape)}")
    if should_check(check_finite, K.device):
        refuse_nonfinite_gram("K", K)
    return K if K.dtype in (torch.float32, torch.float64) else K.float()


def _nan_where_nonfinite(out: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """NaN in row and column i of ``out`` where the diagonal entry d_i is not finite."""
    bad = ~torch.isfinite(d)
    return out.masked_fill(bad.unsqueeze(-1) | bad.unsqueeze(-2), float("nan"))


def cosine_similarity(K: torch.Tensor, /, *, check_finite: bool | None = None) -> torch.Tensor:
    """Pairwise cosine similarity of the task gradients from their Gram matrix.

    Args:
        K: (..., T, T) Gram matrix (:func:`mtl_fast.gram`), any float dtype.
        check_finite: raise :class:`NonFiniteError` naming the tasks whose row of K holds
            NaN/Inf; ``None`` checks on the CPU only. Unchecked, such a task's row and column
            come out NaN.

    Returns:
        (..., T, T) in fp32 (fp64 for fp64 K), values in [−1, 1]. A pair involving a zero
        gradient has cosine 0 (and the diagonal of a zero gradient is 0).

    Example:
        >>> import torch
        >>> cosine_similarity(torch.tensor([[1.0, -2.0], [-2.0, 4.0]]))
        tensor([[ 1., -1.],
                [-1.,  1.]])
    """
    K = _check_gram(K, check_finite)
    d = K.diagonal(dim1=-2, dim2=-1)
    n = d.clamp_min(0).sqrt()
    denom = n.unsqueeze(-1) * n.unsqueeze(-2)
    out = torch.where(denom > 0, K / torch.where(denom > 0, denom, 1), 0)
    return _nan_where_nonfinite(out.clamp(-1, 1), d)


def magnitude_similarity(K: torch.Tensor, /, *, check_finite: bool | None = None) -> torch.Tensor:
    """Pairwise magnitude similarity 2‖g_i‖‖g_j‖ / (‖g_i‖² + ‖g_j‖²) from the Gram matrix.

    Args:
        K: (..., T, T) Gram matrix, any float dtype.
        check_finite: as in :func:`cosine_similarity`.

    Returns:
        (..., T, T) in fp32 (fp64 for fp64 K), values in [0, 1]; 1 where both gradients are 0.

    Example:
        >>> import torch
        >>> magnitude_similarity(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([[1.0000, 0.8000],
                [0.8000, 1.0000]])
    """
    K = _check_gram(K, check_finite)
    diag = K.diagonal(dim1=-2, dim2=-1)
    d = diag.clamp_min(0)
    n = d.sqrt()
    num = 2 * n.unsqueeze(-1) * n.unsqueeze(-2)
    den = d.unsqueeze(-1) + d.unsqueeze(-2)
    out = torch.where(den > 0, num / torch.where(den > 0, den, 1), 1.0)
    return _nan_where_nonfinite(out.clamp(0, 1), diag)  # rounding may give 1 + ulp


def sign_conflict(
    J: torch.Tensor, /, *, backend: str | None = None, check_finite: bool | None = None
) -> torch.Tensor:
    """Fraction of coordinates on which two task gradients have opposite signs.

    C_ij = |{p : sign(J_ip) · sign(J_jp) < 0}| / P; coordinates where either gradient is exactly
    zero do not count as conflicts. The reference reads J once per chunk of coordinates (two
    sign-matrix products, exact integer counts).

    Args:
        J: (..., T, P) per-task gradients, fp16/bf16/fp32/fp64, P ≥ 1.
        backend: "auto", "reference", "triton" or "cuda" (only backends that implement
            ``sign_conflict`` can be requested explicitly).
        check_finite: raise :class:`NonFiniteError` naming the tasks whose gradient holds
            NaN/Inf (a NaN has no sign); ``None`` checks on the CPU only (one pass over J).

    Returns:
        (..., T, T) fp64, symmetric, zero diagonal, values in [0, 1].

    Example:
        >>> import torch
        >>> sign_conflict(torch.tensor([[1.0, 1.0, 0.0, -1.0], [-1.0, 1.0, 2.0, -3.0]]))
        tensor([[0.0000, 0.2500],
                [0.2500, 0.0000]], dtype=torch.float64)
    """
    J = require_tensor("J", J)
    require_float("J", J)
    require_min_dim("J", J, 2, "(..., T, P)")
    T, P = J.shape[-2], J.shape[-1]
    if T == 0 or P == 0:
        raise ValueError(f"J must have T ≥ 1 tasks and P ≥ 1 coordinates, got {tuple(J.shape)}")
    if should_check(check_finite, J.device) and not all_finite(J):
        raise NonFiniteError("gradient J", nonfinite_rows(J))
    lead = J.shape[:-2]
    fn = resolve("sign_conflict", backend, J.device)
    out: torch.Tensor = fn(J.reshape(-1, T, P))
    return out.reshape(*lead, T, T)


@dataclass
class GradientDiagnostics:
    """One diagnostics snapshot (all tensors detached, on the device of the gradients).

    Attributes:
        step: the strategy step it was taken at.
        norms: (T,) gradient norms sqrt(K_tt).
        cosine: (T, T) cosine similarity.
        magnitude: (T, T) magnitude similarity.
        sign_conflict: (T, T) fraction of opposite-sign coordinates, or None when not computed.
        path_length: Σ‖Δθ_shared‖ so far, or None when not tracked.
        space: what the gradients were taken w.r.t.: "parameters" or "features" (MGDA-UB).
    """

    step: int
    norms: torch.Tensor
    cosine: torch.Tensor
    magnitude: torch.Tensor
    sign_conflict: torch.Tensor | None = None
    path_length: float | None = None
    space: str = "parameters"

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly nested lists."""
        return {
            "step": self.step,
            "space": self.space,
            "norms": self.norms.tolist(),
            "cosine": self.cosine.tolist(),
            "magnitude": self.magnitude.tolist(),
            "sign_conflict": None if self.sign_conflict is None else self.sign_conflict.tolist(),
            "path_length": self.path_length,
        }


def gradient_diagnostics(
    K: torch.Tensor,
    /,
    J: torch.Tensor | None = None,
    *,
    step: int = 0,
    path_length: float | None = None,
    space: str = "parameters",
    check_finite: bool | None = None,
) -> GradientDiagnostics:
    """All diagnostics of one step from an existing Gram K (and J for the sign conflicts).

    Args:
        K: (T, T) Gram of the per-task gradients, T ≥ 1.
        J: (T, P) the gradients themselves, P ≥ 1, on K's device; when given, the
            sign-conflict fraction is computed too (one extra pass over J, no backward pass).
        step: the step number (an int ≥ 0); path_length: a finite number ≥ 0 or None;
            space: "parameters" or "features".
        check_finite: as in :func:`cosine_similarity` (and for J, :func:`sign_conflict`).
    """
    K = _check_gram(K, check_finite)
    if K.dim() != 2 or K.shape[0] == 0:
        raise ValueError(f"K must have shape (T, T) with T ≥ 1, got {tuple(K.shape)}")
    if J is not None:
        J = require_tensor("J", J)
        require_float("J", J)
        if J.dim() != 2 or J.shape[0] != K.shape[0]:
            raise ValueError(
                f"J must have shape ({K.shape[0]}, P) to match K, got {tuple(J.shape)}"
            )
        require_same_device("J", J, "K", K)
    require_positive_int("step", step, 0)
    if path_length is not None:
        path_length = require_real("path_length", path_length, low=0.0)
    require_choice("space", space, ("parameters", "features"))
    K = K.detach()
    return GradientDiagnostics(
        step=step,
        norms=K.diagonal().clamp_min(0).sqrt(),
        cosine=cosine_similarity(K, check_finite=False),
        magnitude=magnitude_similarity(K, check_finite=False),
        sign_conflict=None if J is None else sign_conflict(J.detach(), check_finite=check_finite),
        path_length=path_length,
        space=space,
    )


class PathLength:
    """Path length Σ_k ‖θ_k − θ_{k−1}‖₂ of a set of parameters, updated after each step.

    Keeps one (P,) copy of the previous values (fp64 norms of fp32 differences).

    Example:
        >>> import torch
        >>> p = torch.zeros(2)
        >>> tracker = PathLength([p])
        >>> p += torch.tensor([3.0, 4.0]); tracker.update()
        5.0
        >>> p -= torch.tensor([3.0, 4.0]); tracker.update()
        10.0
    """

    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
            raise TypeError(f"params must be an iterable of tensors, got {type(params).__name__}")
        self.params = list(params)
        if not self.params:
            raise ValueError("params is empty: nothing to measure")
        for i, p in enumerate(self.params):
            require_float(f"params[{i}]", require_tensor(f"params[{i}]", p))
            require_same_device(f"params[{i}]", p, "params[0]", self.params[0])
        self.previous = self._flat()
        self.total = 0.0

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).float() for p in self.params])

    def update(self) -> float:
        """Add the distance travelled since the last call and return the total."""
        now = self._flat()
        self.total += float((now - self.previous).double().norm())
        self.previous = now
        return self.total

    def reset(self) -> None:
        """Take the current values as the new start without adding to the total."""
        self.previous = self._flat()

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "previous": self.previous.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (exactly its keys; ``previous`` of this tracker's shape);
        checked before anything is assigned."""
        if not isinstance(state, dict) or set(state) != {"total", "previous"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"state must be a dict with keys ['previous', 'total'], got {keys}")
        total = require_real("state['total']", state["total"], low=0.0)
        previous = require_tensor("state['previous']", state["previous"])
        if previous.shape != self.previous.shape or previous.dtype != self.previous.dtype:
            raise ValueError(
                f"state['previous'] must be a {self.previous.dtype} tensor of shape "
                f"{tuple(self.previous.shape)}, got {previous.dtype} {tuple(previous.shape)}"
            )
        self.total = total
        self.previous = previous.to(self.previous.device).clone()
