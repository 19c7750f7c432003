r"""Public ``dual_cone_projection``: the batched QP behind UPGrad and DualProj.

For the Gram matrix G = J Jᵀ of T task gradients and a weight vector u, the projection of Jᵀu
onto the dual cone {x : Jx ≥ 0} (the directions that conflict with no task) is Jᵀv with

    v = argmin_v vᵀ G̃ v   subject to   v ≥ u,     G̃ = G / tr(G) + reg_eps·I

(Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, Prop. 1;
https://arxiv.org/abs/2406.16232), with G̃ = reg_eps·I when tr(G) < norm_eps: the problem and
the normalisation of TorchJD 0.18's ``QuadprogProjector``. The solver (block principal pivoting,
fp64 inside) is described in :mod:`mtl_fast.kernels.reference.dual_cone` and docs/upgrad.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, overload

import torch

from mtl_fast._core.contracts import DualConeHyper
from mtl_fast._core.dispatch import resolve
from mtl_fast._core.dual_cone_problem import kkt_residual as _kkt_residual
from mtl_fast._core.options import spells
from mtl_fast._core.validate import (
    refuse_nonfinite_gram,
    refuse_nonfinite_weights,
    require_bool,
    require_float,
    require_gram,
    require_min_dim,
    require_nonneg_float,
    require_positive_int,
    require_same_device,
    require_tensor,
    should_check,
)
from mtl_fast.ops._options import BackendKwargs, BackendOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

DEFAULT_MAX_ITER = 64  # factorisations per row; at most 41 measured over ~200k rows
DEFAULT_TOL = 1e-10
DEFAULT_NORM_EPS = 1e-4  # TorchJD's QuadprogProjector defaults
DEFAULT_REG_EPS = 1e-4


def check_options(norm_eps: object, reg_eps: object, max_iter: object, tol: object) -> None:
    """The solver's scalar options; errors name the argument."""
    require_nonneg_float("norm_eps", norm_eps)
    require_nonneg_float("reg_eps", reg_eps)
    require_positive_int("max_iter", max_iter)
    require_nonneg_float("tol", tol)


class DualConeKwargs(BackendKwargs, total=False):
    """The solver's keyword options, shared by :func:`dual_cone_projection`,
    :func:`~mtl_fast.upgrad_weights` and :func:`~mtl_fast.dualproj_weights`; the defaults are
    :class:`SolverOptions`'."""

    norm_eps: float
    reg_eps: float
    max_iter: int
    tol: float


@dataclass(frozen=True, kw_only=True)
class SolverOptions(BackendOptions):
    """What the dual-cone ops pass on to the solver, with their defaults; checked once, here
    (errors name the argument)."""

    norm_eps: float = DEFAULT_NORM_EPS
    reg_eps: float = DEFAULT_REG_EPS
    max_iter: int = DEFAULT_MAX_ITER
    tol: float = DEFAULT_TOL

    def __post_init__(self) -> None:
        super().__post_init__()
        check_options(self.norm_eps, self.reg_eps, self.max_iter, self.tol)


def project(U: torch.Tensor, G: torch.Tensor, options: SolverOptions) -> torch.Tensor:
    """The projection on validated input: U (..., R, T) or (T,), G (..., T, T) of any float
    dtypes → W of U's broadcast shape in G's dtype (fp32 for fp16/bf16)."""
    T = G.shape[-1]
    work = G if G.dtype in (torch.float32, torch.float64) else G.float()
    Uw = U if U.dtype in (torch.float32, torch.float64) else U.float()
    vector = Uw.dim() == 1
    U2 = Uw[None] if vector else Uw
    if work.dim() == 2:
        # One Gram (TorchJD's case): every leading index of U is a row of the one problem.
        out_shape = U2.shape
    else:
        try:
            lead = torch.broadcast_shapes(U2.shape[:-2], work.shape[:-2])
        except RuntimeError:
            raise ValueError(
                f"the leading dimensions of U {tuple(U.shape)} and G {tuple(G.shape)} do not "
                "broadcast: U is (..., R, T) against G (..., T, T)"
            ) from None
        out_shape = torch.Size((*lead, U2.shape[-2], T))
    if out_shape.numel() == 0:
        W = torch.empty(out_shape, dtype=work.dtype, device=G.device)
    else:
        if work.dim() == 2:
            U3, G3 = U2.reshape(1, -1, T), work[None]
        else:
            R = out_shape[-2]
            U3 = U2.expand(*out_shape).reshape(-1, R, T)
            G3 = work.expand(*out_shape[:-2], T, T).reshape(-1, T, T)
        solve = resolve("dual_cone", options.backend, G.device, tasks=T)
        W3 = solve(U3, G3, options.hyper(DualConeHyper, G.device))
        W = W3.reshape(out_shape)
    return W[..., 0, :] if vector else W


def converged_rows(
    U: torch.Tensor,
    G: torch.Tensor,
    W: torch.Tensor,
    *,
    norm_eps: float,
    reg_eps: float,
    tol: float,
) -> torch.Tensor:
    """Rows whose KKT residual (:func:`kkt_residual`) is at most 2·tol plus the rounding of
    recomputing G̃v (64·T·ε of fp64; measured ≤ 1e-12 at T = 128)."""
    res = _kkt_residual(U, G, W, norm_eps=norm_eps, reg_eps=reg_eps)
    slack = 64 * G.shape[-1] * torch.finfo(torch.float64).eps
    return res <= 2 * tol + slack


@overload
def dual_cone_projection(
    U: torch.Tensor,
    G: torch.Tensor,
    /,
    *,
    return_converged: Literal[False] = ...,
    **options: Unpack[DualConeKwargs],
) -> torch.Tensor: ...


@overload
def dual_cone_projection(
    U: torch.Tensor,
    G: torch.Tensor,
    /,
    *,
    return_converged: Literal[True],
    **options: Unpack[DualConeKwargs],
) -> tuple[torch.Tensor, torch.Tensor]: ...


@spells(SolverOptions, DualConeKwargs)
def dual_cone_projection(
    U: torch.Tensor,
    G: torch.Tensor,
    /,
    *,
    return_converged: bool = False,
    **options: Unpack[DualConeKwargs],
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Weights of the projections of the rows of U onto the dual cone of G, batched.

    For every row u of U: W = argmin_v vᵀG̃v subject to v ≥ u, G̃ = G / tr(G) + reg_eps·I
    (G̃ = reg_eps·I when tr(G) < norm_eps) — the problem of TorchJD's ``DualConeProjector`` with
    the normalisation of its ``QuadprogProjector``. When G = JJᵀ, Jᵀv is the projection of Jᵀu
    onto {x : Jx ≥ 0} (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024,
    Prop. 1). KKT: v ≥ u, G̃v ≥ 0, (G̃v)_j (v_j − u_j) = 0. Solved in fp64 by block principal
    pivoting (Júdice & Pires 1994, with Kim & Park's 2011 backup rule): exact up to rounding
    once converged, typically 0-6 Cholesky factorisations per row.

    Args:
        U: (..., R, T) rows to project, or (T,) for one vector (no row dimension in the
            result), fp16/bf16/fp32/fp64. With a 2-D G every leading index of U is a row, as in
            TorchJD; otherwise U's leading dimensions broadcast against G's.
        G: (..., T, T) symmetric positive semi-definite Gram matrices (not checked), T ≥ 1.
        norm_eps: trace threshold of the normalisation (TorchJD's default 1e-4).
        reg_eps: ridge added after normalisation (TorchJD's default 1e-4); > 0 makes the
            solution unique and bounds the condition number of G̃ by (1 + reg_eps) / reg_eps.
        max_iter: factorisations per row at most (the whole budget of the ``sync_free`` form).
            At most 41 were measured (rank-deficient Grams); a row that runs out returns its
            last iterate clamped to W ≥ U — feasible, not optimal; ``return_converged`` says.
        tol: stopping rule: free coordinates may undershoot u by tol·s and multipliers (G̃v)_j
            may be negative by tol·s·G̃_jj, s = max(‖u‖∞, ‖v‖∞); the error in v is then about
            tol·s.
        backend: "auto" (default, or ``MTL_FAST_BACKEND``), "reference", "cpu" (the compiled
            solver, which "auto" picks for CPU tensors when it is built) or "triton" (T ≤ 64,
            which "auto" picks on a GPU; above, the reference runs there).
        check_finite: raise :class:`NonFiniteError` naming the tasks whose row of G, or whose
            column of U, holds NaN/Inf. ``None`` checks on the CPU and skips on a GPU (a host
            sync) and inside ``torch.compile``; unchecked, such problems (or rows) come out as
            NaN rows — never an exception from the solver, never a silently finite answer.
        sync_free: never read a value back to the host (CUDA-graph capturable): the reference
            then runs the whole budget with per-row masks, the Triton kernel always stops each
            row on the device. ``None``: True on a GPU, False on the CPU.
        return_converged: also return a (..., R) bool tensor: whether each row satisfies the
            KKT conditions to 2·tol (plus rounding), checked afterwards in fp64 (one batched
            matrix product; no host read-back).

    Returns:
        W with U's rows broadcast against G's batch, in G's dtype (fp32 for fp16/bf16 G),
        W ≥ U exactly; and the convergence flags when ``return_converged``.

    Example:
        >>> import torch, mtl_fast
        >>> G = torch.tensor([[1.0, -2.0], [-2.0, 9.0]])  # two conflicting gradients
        >>> mtl_fast.dual_cone_projection(torch.eye(2), G)
        tensor([[1.0000, 0.2222],
                [1.9980, 1.0000]])
    """
    solver = SolverOptions(**options)
    G = require_gram("G", G)
    T = G.shape[-1]
    U = require_tensor("U", U)
    require_float("U", U)
    require_min_dim("U", U, 1, f"(..., R, {T}) or ({T},)")
    if U.shape[-1] != T:
        raise ValueError(
            f"U must have shape (..., R, {T}) or ({T},) to match G {tuple(G.shape)}, "
            f"got {tuple(U.shape)}"
        )
    require_same_device("U", U, "G", G)
    require_bool("return_converged", return_converged)
    if should_check(solver.check_finite, G.device):
        refuse_nonfinite_gram("G", G)
        refuse_nonfinite_weights("U", U)
    # With the flags, solve in fp64 and compute them from the fp64 weights (rounding W to fp32
    # alone would move the residual by ~1e-7 × cond(G̃)); only then round W to G's dtype.
    W = project(U, G.to(torch.float64) if return_converged else G, solver)
    if not return_converged:
        return W
    vector = U.dim() == 1
    conv = converged_rows(
        U[None] if vector else U,
        G,
        W[..., None, :] if vector else W,
        norm_eps=solver.norm_eps,
        reg_eps=solver.reg_eps,
        tol=solver.tol,
    )
    out = G.dtype if G.dtype in (torch.float32, torch.float64) else torch.float32
    return W.to(out), conv[..., 0] if vector else conv


def kkt_residual(
    U: torch.Tensor,
    G: torch.Tensor,
    W: torch.Tensor,
    /,
    *,
    norm_eps: float = DEFAULT_NORM_EPS,
    reg_eps: float = DEFAULT_REG_EPS,
) -> torch.Tensor:
    """Scale-free KKT residual of W as the projection weights of U against G, per row.

    The largest of: primal infeasibility max_j (u_j − v_j)₊ / s, dual infeasibility
    max_j (−λ_j)₊ / (s·G̃_jj) and complementarity max_j |λ_j (v_j − u_j)| / (s²·G̃_jj), with
    λ = G̃v and s = max(‖u‖∞, ‖v‖∞): the quantities of the stopping rule, so a converged row of
    :func:`dual_cone_projection` has a residual ≤ tol up to rounding.

    Args:
        U: (..., R, T) rows; G: (..., T, T) Grams (broadcast against U); W: U's shape.
        norm_eps, reg_eps: the normalisation of G.

    Returns:
        (..., R) float64 residuals (0 for a zero row, NaN for non-finite input).

    Example:
        >>> import torch, mtl_fast
        >>> from mtl_fast.ops.dual_cone import kkt_residual
        >>> G = torch.tensor([[1.0, -2.0], [-2.0, 9.0]])
        >>> W = mtl_fast.dual_cone_projection(torch.eye(2), G.double())
        >>> bool((kkt_residual(torch.eye(2), G, W) < 1e-12).all())
        True
    """
    G = require_gram("G", G)
    require_nonneg_float("norm_eps", norm_eps)
    require_nonneg_float("reg_eps", reg_eps)
    for name, x in (("U", U), ("W", W)):
        x = require_tensor(name, x)
        require_float(name, x)
        require_min_dim(name, x, 2, "(..., R, T)")
        require_same_device(name, x, "G", G)
    if U.shape[-1] != G.shape[-1] or W.shape != U.shape:
        raise ValueError(
            f"U and W must have one shape (..., R, {G.shape[-1]}), got {tuple(U.shape)} and "
            f"{tuple(W.shape)}"
        )
    return _kkt_residual(U, G, W, norm_eps=norm_eps, reg_eps=reg_eps)
