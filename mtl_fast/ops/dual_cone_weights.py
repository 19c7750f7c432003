r"""The dual-cone weightings (UPGrad, DualProj), from the Gram matrix of the task gradients.

Each method is one small function ``<method>_weights(K, /, *, ...) -> w``: K = J Jᵀ is the
(..., T, T) Gram of the T task gradients (the rows of J), w the (..., T) weights whose
combination wᵀJ is the method's update direction — TorchJD's ``Weighting`` interface, batched.
Validation and the shared preference-vector handling are the private functions at the top.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mtl_fast._core.options import spells
from mtl_fast._core.validate import (
    refuse_nonfinite_gram,
    refuse_nonfinite_weights,
    require_float,
    require_gram,
    require_min_dim,
    require_same_device,
    require_tensor,
    should_check,
)
from mtl_fast.ops.dual_cone import DualConeKwargs, SolverOptions, project

if TYPE_CHECKING:
    from typing_extensions import Unpack


def _out_dtype(K: torch.Tensor) -> torch.dtype:
    return K.dtype if K.dtype in (torch.float32, torch.float64) else torch.float32


def _preference(pref: torch.Tensor | None, K: torch.Tensor, check: bool) -> torch.Tensor:
    """The preference vector p as (..., T) float64 on K's device: 1/T by default (TorchJD's
    ``MeanWeighting``), else ``pref`` as given — not normalised, negative entries allowed, as
    TorchJD's ``ConstantWeighting`` takes it."""
    T = K.shape[-1]
    if pref is None:
        return torch.full((T,), 1.0 / T, dtype=torch.float64, device=K.device)
    pref = require_tensor("pref", pref)
    require_float("pref", pref)
    require_min_dim("pref", pref, 1, f"(..., {T})")
    if pref.shape[-1] != T:
        raise ValueError(f"pref must have shape (..., {T}) to match K, got {tuple(pref.shape)}")
    require_same_device("pref", pref, "K", K)
    if check:
        refuse_nonfinite_weights("preference vector pref", pref)
    return pref.to(torch.float64)


class WeightingKwargs(DualConeKwargs, total=False):
    """The keyword options of both projection weightings: the solver's and ``pref`` (defaults:
    :class:`WeightingOptions`')."""

    pref: torch.Tensor | None


@dataclass(frozen=True, kw_only=True)
class WeightingOptions(SolverOptions):
    """The solver's options with the preference vector of a projection weighting (None: 1/T)."""

    pref: torch.Tensor | None = None


def _checked(
    K: object, options: WeightingKwargs
) -> tuple[torch.Tensor, torch.Tensor, WeightingOptions]:
    """(K, p, the options) after the checks every projection weighting makes; errors name the
    argument (a keyword it does not take, too)."""
    given = WeightingOptions(**options)
    K = require_gram("K", K)
    check = should_check(given.check_finite, K.device)
    p = _preference(given.pref, K, check)
    if check:
        refuse_nonfinite_gram("K", K)
    return K, p, given


@spells(WeightingOptions, WeightingKwargs)
def upgrad_weights(K: torch.Tensor, /, **options: Unpack[WeightingKwargs]) -> torch.Tensor:
    r"""UPGrad weights (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024).

    Each task gradient g_i is projected onto the dual cone {x : Jx ≥ 0} and the projections are
    combined with the preference p: w = Σ_i v_i with v_i = argmin_{v ≥ p_i e_i} vᵀK̃v (see
    :func:`mtl_fast.dual_cone_projection` for K̃ and the solver), so wᵀJ = Σ_i p_i π(g_i) conflicts
    with no task. TorchJD's ``UPGradWeighting``: U = diag(p), W = projector(U, K), w = W.sum(0).
    By positive homogeneity v_i is p_i times the projection of e_i, and 0 when p_i ≤ 0.

    Args:
        K: (..., T, T) Gram matrices J Jᵀ, fp16/bf16/fp32/fp64.
        pref: (T,) or (..., T) preference vector p (broadcast against K's batch); default 1/T.
            Not normalised, as in TorchJD.
        norm_eps, reg_eps, max_iter, tol, backend, sync_free: as in
            :func:`mtl_fast.dual_cone_projection`.
        check_finite: raise :class:`NonFiniteError` naming the tasks whose row of K (or entry
            of pref) is NaN/Inf; ``None`` checks on the CPU only. Unchecked, a non-finite
            problem gets NaN weights.

    Returns:
        (..., T) weights in K's dtype (fp32 for fp16/bf16), solved and summed in fp64.

    Example:
        >>> import torch, mtl_fast
        >>> K = torch.tensor([[1.0, -2.0], [-2.0, 9.0]])  # cosine −2/3
        >>> mtl_fast.upgrad_weights(K)  # TorchJD's UPGradWeighting()(K) gives the same
        tensor([1.4990, 0.6111])
    """
    K, p, given = _checked(K, options)
    W = project(torch.diag_embed(p), K.to(torch.float64), given)
    return W.sum(dim=-2).to(_out_dtype(K))


@spells(WeightingOptions, WeightingKwargs)
def dualproj_weights(K: torch.Tensor, /, **options: Unpack[WeightingKwargs]) -> torch.Tensor:
    r"""DualProj weights: the projection weights of the preference vector p itself.

    w = argmin_{v ≥ p} vᵀK̃v, so wᵀJ is the projection of pᵀJ onto the dual cone of the rows of J
    (GEM's Eq. 11, Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", 2017).
    TorchJD's ``DualProjWeighting``: w = projector(p, K).

    Args:
        K: (..., T, T) Gram matrices J Jᵀ, fp16/bf16/fp32/fp64.
        pref: (T,) or (..., T) preference vector p; default 1/T.
        norm_eps, reg_eps, max_iter, tol, backend, check_finite, sync_free: as in
            :func:`upgrad_weights`.

    Returns:
        (..., T) weights in K's dtype (fp32 for fp16/bf16), solved in fp64.

    Example:
        >>> import torch, mtl_fast
        >>> K = torch.tensor([[1.0, -2.0], [-2.0, 9.0]])  # the mean conflicts with task 0
        >>> mtl_fast.dualproj_weights(K)  # TorchJD's DualProjWeighting()(K) gives the same
        tensor([0.9990, 0.5000])
    """
    K, p, given = _checked(K, options)
    W = project(p[..., None, :], K.to(torch.float64), given)
    return W[..., 0, :].to(_out_dtype(K))
