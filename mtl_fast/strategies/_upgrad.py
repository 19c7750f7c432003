"""UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024), and the
machinery it shares with :class:`~mtl_fast.strategies.DualProj`: projections onto the dual cone
of the task gradients, combined then stepped by the user's optimizer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from mtl_fast._core.dispatch import resolve
from mtl_fast._core.options import spells
from mtl_fast._core.validate import require_float, require_tensor
from mtl_fast.ops.dual_cone import (
    DEFAULT_MAX_ITER,
    DEFAULT_NORM_EPS,
    DEFAULT_REG_EPS,
    DEFAULT_TOL,
    check_options,
    refuse_nonfinite_weights,
)
from mtl_fast.ops.dual_cone_weights import upgrad_weights
from mtl_fast.strategies._combine_base import CombineStrategy
from mtl_fast.strategies._options import ArenaKwargs

if TYPE_CHECKING:
    from typing_extensions import Unpack


@spells(CombineStrategy.__init__, ArenaKwargs)
class DualConeStrategy(CombineStrategy):
    """Base of the strategies whose weights come from projections onto the dual cone
    {x : Jx ≥ 0} of the task gradients (:func:`mtl_fast.dual_cone_projection`).

    Per step: T backward passes write ∇_shared L_t into the gradient arena J (T, P) with no
    copy; K = J Jᵀ; the weights w = :meth:`_weights` (K); the shared ``.grad`` receives wᵀJ
    (one pass over J, no further trunk backward) and the heads ∇ Σ_t w_t L_t (a backward through
    the heads only): the gradients of Σ_t w_t L_t, c = w (``last.weights`` and
    ``last.loss_scales`` are both w). TorchJD's ``mtl_backward`` gives each head its own
    unweighted ∇L_t instead; the shared update is the same.
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        pref: torch.Tensor | None = None,
        norm_eps: float = DEFAULT_NORM_EPS,
        reg_eps: float = DEFAULT_REG_EPS,
        max_iter: int = DEFAULT_MAX_ITER,
        tol: float = DEFAULT_TOL,
        **options: Unpack[ArenaKwargs],
    ) -> None:
        super().__init__(shared_params, task_params, num_tasks, **options)
        if pref is not None:
            pref = require_tensor("pref", pref)
            require_float("pref", pref)
            if pref.shape != (num_tasks,):
                raise ValueError(
                    f"pref must have shape ({num_tasks},) (num_tasks), got {tuple(pref.shape)}"
                )
            refuse_nonfinite_weights("preference vector pref", pref)
            pref = pref.detach().clone()
        check_options(norm_eps, reg_eps, max_iter, tol)
        self.pref = pref
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.max_iter = max_iter
        self.tol = tol
        # The solver's backend too: an explicit one that cannot run raises now, not at step 1.
        resolve("dual_cone", self.backend, self.shared_params[0].device, tasks=num_tasks)

    def _weights(self, K: torch.Tensor) -> torch.Tensor:
        """(T,) weights from the (T, T) Gram of the raw gradients, in K's dtype."""
        raise NotImplementedError

    def _solver_options(self, K: torch.Tensor) -> dict[str, Any]:
        return {
            "pref": None if self.pref is None else self.pref.to(K.device),
            "norm_eps": self.norm_eps,
            "reg_eps": self.reg_eps,
            "max_iter": self.max_iter,
            "tol": self.tol,
            "backend": self.backend,
            "check_finite": False,  # K was checked (or "ignore" asked for no check)
        }

    def _decide(self, K: torch.Tensor, lv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self._weights(K)
        return w, w


class UPGrad(DualConeStrategy):
    """UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024).

    Each task gradient g_i is projected onto the dual cone {x : Jx ≥ 0} of all of them and the
    projections are averaged with the preference p (default 1/T): the update Σ_i p_i π(g_i)
    conflicts with no task (a non-negative inner product with every g_t), and equals the mean
    gradient when no two tasks conflict. Weights from :func:`mtl_fast.upgrad_weights` on the
    Gram of the raw gradients (TorchJD's ``UPGrad`` semantics: trace normalisation, ridge
    ``reg_eps``); then combine-then-step as in :class:`DualConeStrategy`.

    Args:
        shared_params, task_params, num_tasks, diagnostics_every, on_nonfinite: see
            :class:`~mtl_fast.strategies.Strategy`.
        pref: (T,) preference vector (default 1/T; not normalised, as in TorchJD).
        norm_eps, reg_eps, max_iter, tol, backend: passed to :func:`mtl_fast.upgrad_weights`
            (``backend`` also to the Gram and the combination).
        batched, chunk_size: how the arena is filled, as in :class:`~mtl_fast.strategies.MGDA`.

    Example (:class:`~mtl_fast.strategies.DualProj` is used alike):
        >>> import torch
        >>> from mtl_fast.strategies import DualProj, UPGrad
        >>> trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList(
        ...     torch.nn.Linear(8, 1) for _ in range(2))
        >>> for method in (UPGrad, DualProj):
        ...     strategy = method(trunk.parameters(), heads.parameters(), num_tasks=2)
        ...     z = trunk(torch.randn(16, 4))
        ...     done = strategy.backward([h(z).pow(2).mean() for h in heads])
        ...     print(type(strategy).__name__, done, strategy.last.weights.shape)
        UPGrad True torch.Size([2])
        DualProj True torch.Size([2])
    """

    def _weights(self, K: torch.Tensor) -> torch.Tensor:
        return upgrad_weights(K, **self._solver_options(K))
