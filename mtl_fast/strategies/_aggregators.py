"""Combine-then-step strategies on the Gram-space aggregators (:mod:`mtl_fast.ops.aggregators`):
PCGrad, IMTL-G, CAGrad, Nash-MTL, Aligned-MTL and ConFIG.

Each step: T backward passes write ∇_shared L_t into the gradient arena J (T, P) with no copy;
K = J Jᵀ; the method's coefficients c from K alone; the shared ``.grad`` receives d = Jᵀc (one
pass over J, no further trunk backward) and each head ∇ c_t L_t, as for
:class:`~mtl_fast.strategies.MGDA`. Diagnostics come from the same Gram.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch

from mtl_fast._core.options import spells
from mtl_fast._core.validate import require_positive_int
from mtl_fast.ops import aggregators as ops
from mtl_fast.strategies._combine_base import CombineStrategy
from mtl_fast.strategies._options import ArenaKwargs

if TYPE_CHECKING:
    from typing_extensions import Unpack


class GramAggregator(CombineStrategy):
    """Base of the strategies whose coefficients are a function of the Gram matrix K alone.

    Subclasses implement :meth:`coefficients`; the step is that of :class:`MGDA` with c in
    place of the min-norm weights (``last.weights`` = ``last.loss_scales`` = c).

    Example (every aggregator is used alike; its own arguments are in its class):
        >>> import torch
        >>> from mtl_fast.strategies import IMTLG, AlignedMTL, CAGrad, ConFIG, NashMTL, PCGrad
        >>> trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList(
        ...     torch.nn.Linear(8, 1) for _ in range(2))
        >>> own = {PCGrad: {"seed": 0}, CAGrad: {"c": 0.4}}
        >>> made, done = {}, []
        >>> for method in (PCGrad, IMTLG, CAGrad, NashMTL, AlignedMTL, ConFIG):
        ...     made[method] = method(trunk.parameters(), heads.parameters(), num_tasks=2,
        ...                           **own.get(method, {}))
        ...     z = trunk(torch.randn(16, 4))
        ...     done.append(made[method].backward([h(z).pow(2).mean() for h in heads]))
        >>> done
        [True, True, True, True, True, True]
        >>> round(float(made[IMTLG].last.weights.sum()), 6)
        1.0
        >>> made[NashMTL].alpha.shape
        torch.Size([2])
    """

    def coefficients(self, K: torch.Tensor) -> torch.Tensor:
        """c (T,) from the Gram K (T, T) of the step's shared gradients."""
        raise NotImplementedError

    def _decide(self, K: torch.Tensor, lv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.coefficients(K)
        return c, c


@spells(GramAggregator.__init__, ArenaKwargs)
class PCGrad(GramAggregator):
    """PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

    Each task's gradient is projected, in a random order of the other tasks, onto the normal
    plane of every gradient it conflicts with, and the projections are summed
    (:func:`mtl_fast.pcgrad_weights`). The orders come from the strategy's own generator,
    seeded with ``seed``, on the parameters' device: a run is reproducible, and its state is in
    :meth:`state_dict`.

    Example: see :class:`GramAggregator`.

    Args:
        shared_params, task_params, num_tasks, backend, batched, chunk_size, diagnostics_every,
            on_nonfinite: see :class:`~mtl_fast.strategies.MGDA`.
        seed: seed of the projection orders.
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        seed: int = 0,
        **options: Unpack[ArenaKwargs],
    ) -> None:
        super().__init__(shared_params, task_params, num_tasks, **options)
        self.generator = torch.Generator(device=self.shared_params[0].device)
        self.generator.manual_seed(seed)

    def coefficients(self, K: torch.Tensor) -> torch.Tensor:
        order = ops.pcgrad_order((), self.num_tasks, generator=self.generator, device=K.device)
        return ops.pcgrad_weights(K, order=order, backend=self.backend, check_finite=False)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


class IMTLG(GramAggregator):
    """IMTL-G (Liu et al., "Towards Impartial Multi-task Learning", ICLR 2021): the update has
    equal projections onto every task's unit gradient (:func:`mtl_fast.imtlg_weights`).

    Example: see :class:`GramAggregator`.

    Args:
        shared_params, task_params, num_tasks, backend, batched, chunk_size, diagnostics_every,
            on_nonfinite: see :class:`~mtl_fast.strategies.MGDA`.
    """

    def coefficients(self, K: torch.Tensor) -> torch.Tensor:
        return ops.imtlg_weights(K, backend=self.backend, check_finite=False)


@spells(GramAggregator.__init__, ArenaKwargs)
class CAGrad(GramAggregator):
    """CAGrad (Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
    NeurIPS 2021): the direction within c·‖g₀‖ of the mean gradient g₀ that maximises the worst
    task's improvement (:func:`mtl_fast.cagrad_weights`).

    Example: see :class:`GramAggregator`.

    Args:
        shared_params, task_params, num_tasks, backend, batched, chunk_size, diagnostics_every,
            on_nonfinite: see :class:`~mtl_fast.strategies.MGDA`.
        c: radius scale (default 0.5, the official code's; TorchJD has no default).
        norm_eps, rescale, max_iter, tol: see :func:`mtl_fast.cagrad_weights`.
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        c: float = 0.5,
        norm_eps: float = ops.CAGRAD_NORM_EPS,
        rescale: Literal[0, 1, 2] = 0,
        max_iter: int = ops.CAGRAD_MAX_ITER,
        tol: float = ops.CAGRAD_TOL,
        **options: Unpack[ArenaKwargs],
    ) -> None:
        super().__init__(shared_params, task_params, num_tasks, **options)
        self.c = c
        self.norm_eps = norm_eps
        self.rescale: Literal[0, 1, 2] = rescale
        self.max_iter = max_iter
        self.tol = tol
        # Validated once, here (the backend is checked where it runs).
        ops.cagrad_weights(
            torch.eye(1), c=c, norm_eps=norm_eps, rescale=rescale, max_iter=max_iter, tol=tol
        )

    def coefficients(self, K: torch.Tensor) -> torch.Tensor:
        return ops.cagrad_weights(
            K,
            c=self.c,
            norm_eps=self.norm_eps,
            rescale=self.rescale,
            max_iter=self.max_iter,
            tol=self.tol,
            backend=self.backend,
            check_finite=False,
        )


@spells(GramAggregator.__init__, ArenaKwargs)
class NashMTL(GramAggregator):
    """Nash-MTL (Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022): α > 0
    with g_iᵀ(Jᵀα) = 1/α_i for every task, the update clipped to ‖Jᵀα‖ ≤ ``max_norm``
    (:func:`mtl_fast.nash_mtl_step`).

    Stateful like TorchJD's ``NashMTL``: α is recomputed every ``update_weights_every`` steps
    (warm-started from, and falling back to, the previous α) and reused, re-clipped with the
    current gradients, in between. The state is in :meth:`state_dict`.

    Example: see :class:`GramAggregator`.

    Args:
        shared_params, task_params, num_tasks, backend, batched, chunk_size, diagnostics_every,
            on_nonfinite: see :class:`~mtl_fast.strategies.MGDA`.
        max_norm: the clipping bound (0: none).
        update_weights_every: steps between weight updates.
        max_iter, tol: the Newton budget and tolerance (see :func:`mtl_fast.nash_mtl_step`).
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        max_norm: float = ops.NASH_MAX_NORM,
        update_weights_every: int = 1,
        max_iter: int = ops.NASH_MAX_ITER,
        tol: float = ops.NASH_TOL,
        **options: Unpack[ArenaKwargs],
    ) -> None:
        super().__init__(shared_params, task_params, num_tasks, **options)
        require_positive_int("update_weights_every", update_weights_every, 1)
        ops.nash_mtl_step(torch.eye(1), max_norm=max_norm, max_iter=max_iter, tol=tol)  # validate
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.max_iter = max_iter
        self.tol = tol
        self.alpha = torch.ones(num_tasks, dtype=torch.float64, device=self.shared_params[0].device)

    def coefficients(self, K: torch.Tensor) -> torch.Tensor:
        update = self.num_steps % self.update_weights_every == 0
        weights, alpha = ops.nash_mtl_step(
            K,
            prev_alpha=self.alpha,
            max_norm=self.max_norm,
            max_iter=self.max_iter if update else 0,
            tol=self.tol,
            backend=self.backend,
            check_finite=False,
        )
        self.alpha = alpha.to(torch.float64)
        return weights

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["alpha"] = self.alpha.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.alpha = state["alpha"].to(self.alpha.device, torch.float64).clone()


def _pref(pref: Sequence[float] | torch.Tensor | None, T: int, device: torch.device) -> Any:
    if pref is None:
        return None
    p = torch.as_tensor(pref, dtype=torch.float64).detach().clone().to(device)
    if p.shape != (T,):
        raise ValueError(f"pref must have shape ({T},), got {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()):
        raise ValueError("pref must be finite")
    return p


@spells(GramAggregator.__init__, ArenaKwargs)
class AlignedMTL(GramAggregator):
    """Aligned-MTL (Senushkin et al., "Independent Component Alignment for Multi-Task
    Learning", CVPR 2023): the preference vector mapped through the transformation that gives
    the task gradients equal singular values (:func:`mtl_fast.aligned_mtl_weights`).

    Example: see :class:`GramAggregator`.

    Args:
        shared_params, task_params, num_tasks, backend, batched, chunk_size, diagnostics_every,
            on_nonfinite: see :class:`~mtl_fast.strategies.MGDA`.
        pref: (T,) preference vector (default 1/T each, TorchJD's).
        scale_mode: "min", "median" or "rmse".
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        pref: Sequence[float] | torch.Tensor | None = None,
        scale_mode: Literal["min", "median", "rmse"] = "min",
        **options: Unpack[ArenaKwargs],
    ) -> None:
        super().__init__(shared_params, task_params, num_tasks, **options)
        self.pref = _pref(pref, num_tasks, self.shared_params[0].device)
        ops.aligned_mtl_weights(torch.eye(num_tasks), scale_mode=scale_mode)  # validate
        self.scale_mode: Literal["min", "median", "rmse"] = scale_mode

    def coefficients(self, K: torch.Tensor) -> torch.Tensor:
        return ops.aligned_mtl_weights(
            K, pref=self.pref, scale_mode=self.scale_mode, backend=self.backend, check_finite=False
        )


@spells(GramAggregator.__init__, ArenaKwargs)
class ConFIG(GramAggregator):
    """ConFIG (Liu et al., "ConFIG: Towards Conflict-free Training of Physics Informed Neural
    Networks", ICLR 2025): the direction with equal positive cosine to every task gradient (or
    cosines ∝ ``pref``), scaled by the sum of the projections (:func:`mtl_fast.config_weights`).

    Example: see :class:`GramAggregator`.

    Args:
        shared_params, task_params, num_tasks, backend, batched, chunk_size, diagnostics_every,
            on_nonfinite: see :class:`~mtl_fast.strategies.MGDA`.
        pref: (T,) target cosine weights (default ones).
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        pref: Sequence[float] | torch.Tensor | None = None,
        **options: Unpack[ArenaKwargs],
    ) -> None:
        super().__init__(shared_params, task_params, num_tasks, **options)
        self.pref = _pref(pref, num_tasks, self.shared_params[0].device)

    def coefficients(self, K: torch.Tensor) -> torch.Tensor:
        return ops.config_weights(K, pref=self.pref, backend=self.backend, check_finite=False)
