"""MGDA (Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization", NeurIPS 2018)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from mtl_fast._core.dispatch import resolve
from mtl_fast._core.options import spells
from mtl_fast._core.validate import (
    require_choice,
    require_nonneg_float,
    require_positive_int,
)
from mtl_fast.ops.min_norm import DEFAULT_MAX_ITER, DEFAULT_TOL, min_norm
from mtl_fast.strategies._combine_base import CombineStrategy
from mtl_fast.strategies._options import ArenaKwargs

if TYPE_CHECKING:
    from typing_extensions import Unpack

NORMALIZATIONS = ("none", "l2", "loss", "loss+")
APPLY_TO = ("raw", "normalized")


def normalizers(K: torch.Tensor, losses: torch.Tensor, normalization: str) -> torch.Tensor:
    """The per-task divisors n_t of the gradients before the min-norm solve.

    ``none``: 1;  ``l2``: ‖g_t‖ = sqrt(K_tt);  ``loss``: L_t;  ``loss+``: L_t · ‖g_t‖
    (the options of Sener & Koltun's code). A divisor that is 0 or not finite is replaced by 1,
    so a zero gradient stays zero instead of becoming NaN.

    Args:
        K: (T, T) Gram of the raw gradients.
        losses: (T,) the raw loss values.

    Returns:
        (T,) in K's dtype.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    norms = K.diagonal().clamp_min(0).sqrt()
    lv = losses.to(K.dtype)
    if normalization == "none":
        n = torch.ones_like(norms)
    elif normalization == "l2":
        n = norms
    elif normalization == "loss":
        n = lv
    else:
        n = lv * norms
    return torch.where((n != 0) & torch.isfinite(n), n, torch.ones_like(n))


def solve_weights(
    K: torch.Tensor,
    losses: torch.Tensor,
    *,
    normalization: str,
    apply_to: str,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MGDA's decision from the Gram of the raw gradients.

    With divisors n (:func:`normalizers`), the normalised gradients ĝ_t = g_t / n_t have Gram
    K̂ = K / (n nᵀ); w = argmin_{w ∈ simplex} wᵀK̂w. The coefficients applied to the losses are
    c = w (``apply_to="raw"``, what the official code does: Σ_t w_t L_t is backpropagated) or
    c = w / n (``"normalized"``: the shared gradient is exactly the min-norm point Σ_t w_t ĝ_t).

    Returns:
        (w, c), both (T,) in K's dtype.
    """
    if apply_to not in APPLY_TO:
        raise ValueError(f"apply_to must be one of {APPLY_TO}, got {apply_to!r}")
    n = normalizers(K, losses, normalization)
    Kn = K / (n.unsqueeze(0) * n.unsqueeze(1))
    w = min_norm(Kn, max_iter=max_iter, tol=tol, backend=backend, check_finite=False)
    c = w if apply_to == "raw" else w / n
    return w, c


@spells(CombineStrategy.__init__, ArenaKwargs)
class MGDA(CombineStrategy):
    """MGDA on the gradients w.r.t. the shared parameters (Sener & Koltun, NeurIPS 2018).

    Per step: T backward passes write ∇_shared L_t into the gradient arena J (T, P) with no
    copy; K = J Jᵀ; optional normalisation; w = min-norm point of the simplex (away-step
    Frank-Wolfe, :func:`mtl_fast.min_norm`); the shared ``.grad`` receives Σ_t c_t J_t (one pass
    over J, no further trunk backward) and the heads ∇ Σ_t c_t L_t (a backward through the heads
    only). c = w applies the weights to the raw losses as the official code does (default);
    ``apply_to="normalized"`` uses c = w / n (see :func:`solve_weights`).

    Diagnostics come from the Gram that already exists (plus one pass over J for sign
    conflicts): no extra backward pass.

    Per step beyond the user's forward and the T backward passes: the Gram (one read of J),
    the solve, the combination (one more read of J, written into a buffer kept across steps when
    every shared ``.grad`` is empty), one backward pass through the heads, and one host read for
    the NaN/Inf refusal. Every hyperparameter and the backend of each op are checked once, here.

    Args:
        shared_params, task_params, num_tasks, diagnostics_every, on_nonfinite: see
            :class:`~mtl_fast.strategies.Strategy`.
        normalization: "none" (default), "l2", "loss" or "loss+".
        apply_to: "raw" (default) or "normalized".
        max_iter, tol, backend: passed to :func:`mtl_fast.min_norm` / the other ops.
        batched: fill the arena with one vmapped backward pass per chunk of tasks instead of
            one backward pass per task (:meth:`mtl_fast.TaskGradients.backward`); None picks
            per device (:data:`mtl_fast.optim.task_gradients.BATCHED_DEFAULT`).
        chunk_size: tasks per vmapped pass (None: all T), bounding its memory.

    Example:
        >>> import torch
        >>> from mtl_fast.strategies import MGDA, MGDAUB
        >>> trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList(
        ...     torch.nn.Linear(8, 1) for _ in range(2))
        >>> mgda = MGDA(trunk.parameters(), heads.parameters(), num_tasks=2, normalization="l2")
        >>> z = trunk(torch.randn(16, 4))
        >>> mgda.backward([h(z).pow(2).mean() for h in heads])
        True
        >>> float(mgda.last.weights.sum())
        1.0
        >>> ub = MGDAUB(trunk.parameters(), heads.parameters(), num_tasks=2)  # on ∇_z instead
        >>> z = trunk(torch.randn(16, 4))
        >>> ub.backward([h(z).pow(2).mean() for h in heads], features=z)
        True
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        normalization: str = "none",
        apply_to: str = "raw",
        max_iter: int = DEFAULT_MAX_ITER,
        tol: float = DEFAULT_TOL,
        **options: Unpack[ArenaKwargs],
    ) -> None:
        super().__init__(shared_params, task_params, num_tasks, **options)
        require_choice("normalization", normalization, NORMALIZATIONS)
        require_choice("apply_to", apply_to, APPLY_TO)
        require_positive_int("max_iter", max_iter)
        require_nonneg_float("tol", tol)
        self.normalization = normalization
        self.apply_to = apply_to
        self.max_iter = max_iter
        self.tol = float(tol)
        device = self.shared_params[0].device
        self._solve = (
            resolve("min_norm", self.backend, device, tasks=num_tasks) if num_tasks > 1 else None
        )
        self._sync_free = device.type != "cpu"

    def _decide(self, K: torch.Tensor, lv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalization == "none":
            # The common case without the normalisers' dozen small ops: c = w either way.
            if self._solve is None:
                w = torch.ones(1, dtype=K.dtype, device=K.device)
            else:
                w = self._solve(
                    K.unsqueeze(0), max_iter=self.max_iter, tol=self.tol, sync_free=self._sync_free
                )[0]
            return w, w
        return solve_weights(
            K,
            lv,
            normalization=self.normalization,
            apply_to=self.apply_to,
            max_iter=self.max_iter,
            tol=self.tol,
            backend=self.backend,
        )
