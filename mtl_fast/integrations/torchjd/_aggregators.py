"""Drop-in TorchJD (≥ 0.18) Weightings and Aggregators backed by mtl_fast's Gram-space
aggregators.

Each class takes the constructor arguments of TorchJD's class of the same name and returns the
same weights (to the solver tolerances given in docs/aggregators.md), computed by
:mod:`mtl_fast.ops.aggregators`: on the compiled CPU library or a Triton kernel instead of
Python loops, cvxpy or host round trips. Swap the import and keep the rest of the TorchJD code::

    from torchjd.aggregation import GramianWeightedAggregator
    from mtl_fast.integrations.torchjd import CAGradWeighting   # was: torchjd.aggregation

    aggregator = GramianWeightedAggregator(CAGradWeighting(c=0.5))

===========================  ===================================  ==============================
class                        TorchJD's counterpart                input
===========================  ===================================  ==============================
:class:`PCGradWeighting`     ``PCGradWeighting()``                Gramian
:class:`IMTLGWeighting`      ``IMTLGWeighting()``                 Gramian
:class:`CAGradWeighting`     ``CAGradWeighting(c, norm_eps)``     Gramian
:class:`AlignedMTLWeighting` ``AlignedMTLWeighting(pref_vector,   Gramian
                             scale_mode)``
:class:`NashMTLWeighting`    ``NashMTL``'s private weighting      matrix (as TorchJD's)
:class:`NashMTL`             ``NashMTL(n_tasks, max_norm,         matrix (an Aggregator)
                             update_weights_every, optim_niter)``
:class:`ConFIGWeighting`     (none: TorchJD's ConFIG works on J)  Gramian
:class:`ConFIG`              ``ConFIG(pref_vector)``              matrix (an Aggregator)
===========================  ===================================  ==============================

Every class also takes keyword-only ``backend`` (default "auto") and, where the method iterates,
its solver budget. The weights are not differentiable (TorchJD's are not either).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torchjd import Stateful
from torchjd.aggregation import GramianWeightedAggregator, WeightedAggregator, Weighting

from mtl_fast._core.validate import require_positive_int
from mtl_fast.ops.aggregators import (
    CAGRAD_MAX_ITER,
    CAGRAD_TOL,
    NASH_MAX_ITER,
    NASH_TOL,
    aligned_mtl_weights,
    cagrad_weights,
    config_weights,
    imtlg_weights,
    nash_mtl_step,
    pcgrad_order,
    pcgrad_weights,
)
from mtl_fast.ops.gram import gram

__all__ = [
    "AlignedMTLWeighting",
    "CAGradWeighting",
    "ConFIG",
    "ConFIGWeighting",
    "IMTLGWeighting",
    "NashMTL",
    "NashMTLWeighting",
    "PCGradWeighting",
]


def _check_pref(pref_vector: Tensor | None) -> Tensor | None:
    if pref_vector is not None:
        if not isinstance(pref_vector, Tensor):
            raise TypeError(
                f"pref_vector must be a torch.Tensor or None, got {type(pref_vector).__name__}"
            )
        if pref_vector.ndim != 1:
            raise ValueError(
                "Parameter `pref_vector` must be a vector (1D Tensor). Found "
                f"`pref_vector.ndim = {pref_vector.ndim}`."
            )
    return pref_vector


def _pref_on(pref_vector: Tensor | None, like: Tensor) -> Tensor | None:
    return None if pref_vector is None else pref_vector.to(like.device)


class PCGradWeighting(Weighting):  # type: ignore[misc]
    """TorchJD's ``PCGradWeighting`` (Yu et al., NeurIPS 2020) on :func:`mtl_fast.pcgrad_weights`.

    Args:
        generator: where the projection orders come from. None (default): TorchJD's own draws,
            ``torch.randperm(T)`` once per task from the global CPU generator, so that after the
            same ``torch.manual_seed`` the weights are TorchJD's (bit for bit in fp64). A
            ``torch.Generator`` on the Gramian's device: one device-side draw per call
            (:func:`mtl_fast.pcgrad_order`), no host round trip.
        backend: "auto", "reference", "cpu" or "triton".

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import PCGradWeighting
        >>> PCGradWeighting()(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))
        tensor([1.5000, 1.5000])
    """

    def __init__(
        self, *, generator: torch.Generator | None = None, backend: str | None = None
    ) -> None:
        super().__init__()
        self.generator = generator
        self.backend = backend

    def forward(self, gramian: Tensor, /) -> Tensor:
        T = gramian.shape[-1]
        with torch.no_grad():
            if self.generator is None:
                order = torch.stack([torch.randperm(T) for _ in range(T)]).to(gramian.device)
            else:
                order = pcgrad_order((), T, generator=self.generator, device=gramian.device)
            return pcgrad_weights(gramian, order=order, backend=self.backend)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


class IMTLGWeighting(Weighting):  # type: ignore[misc]
    """TorchJD's ``IMTLGWeighting`` (Liu et al., ICLR 2021) on :func:`mtl_fast.imtlg_weights`.

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import IMTLGWeighting
        >>> IMTLGWeighting()(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([0.6667, 0.3333])
    """

    def __init__(self, *, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend

    def forward(self, gramian: Tensor, /) -> Tensor:
        with torch.no_grad():
            return imtlg_weights(gramian, backend=self.backend)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


class CAGradWeighting(Weighting):  # type: ignore[misc]
    """TorchJD's ``CAGradWeighting(c, norm_eps=1e-4)`` (Liu et al., NeurIPS 2021) on
    :func:`mtl_fast.cagrad_weights`: the inner problem by a batched Frank-Wolfe solver with an
    exact stopping rule instead of cvxpy/Clarabel.

    Args:
        c: radius scale, ≥ 0 (required, as in TorchJD).
        norm_eps: TorchJD's threshold.
        rescale, max_iter, tol, backend: see :func:`mtl_fast.cagrad_weights`.

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import CAGradWeighting
        >>> CAGradWeighting(c=0.5)(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))
        tensor([0.7500, 0.7500])
    """

    def __init__(
        self,
        c: float,
        norm_eps: float = 0.0001,
        *,
        rescale: Literal[0, 1, 2] = 0,
        max_iter: int = CAGRAD_MAX_ITER,
        tol: float = CAGRAD_TOL,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.c = c
        self.norm_eps = norm_eps
        # The options TorchJD's class does not have, passed on as they are.
        self.options: dict[str, Any] = dict(
            rescale=rescale, max_iter=max_iter, tol=tol, backend=backend
        )
        # Validate once, here (the backend is checked where it runs).
        cagrad_weights(
            torch.eye(1), c=c, norm_eps=norm_eps, rescale=rescale, max_iter=max_iter, tol=tol
        )

    def forward(self, gramian: Tensor, /) -> Tensor:
        with torch.no_grad():
            return cagrad_weights(gramian, c=self.c, norm_eps=self.norm_eps, **self.options)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(c={self.c}, norm_eps={self.norm_eps})"


class AlignedMTLWeighting(Weighting):  # type: ignore[misc]
    """TorchJD's ``AlignedMTLWeighting(pref_vector=None, scale_mode="min")`` (Senushkin et
    al., CVPR 2023) on :func:`mtl_fast.aligned_mtl_weights`.

    Args:
        pref_vector: (T,) preference vector; None: 1/T each (TorchJD's ``MeanWeighting``).
        scale_mode: "min", "median" or "rmse".
        backend: "auto", "reference" or "cpu".

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import AlignedMTLWeighting
        >>> AlignedMTLWeighting()(torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
        tensor([0.2500, 0.5000])
    """

    def __init__(
        self,
        pref_vector: Tensor | None = None,
        scale_mode: Literal["min", "median", "rmse"] = "min",
        *,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        aligned_mtl_weights(torch.eye(1), scale_mode=scale_mode)  # validate
        self.pref_vector = _check_pref(pref_vector)
        self.scale_mode: Literal["min", "median", "rmse"] = scale_mode
        self.backend = backend

    def forward(self, gramian: Tensor, /) -> Tensor:
        with torch.no_grad():
            return aligned_mtl_weights(
                gramian,
                pref=_pref_on(self.pref_vector, gramian),
                scale_mode=self.scale_mode,
                backend=self.backend,
            )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(pref_vector={self.pref_vector!r}, "
            f"scale_mode={self.scale_mode!r})"
        )


class ConFIGWeighting(Weighting):  # type: ignore[misc]
    """The weights of TorchJD's ``ConFIG(pref_vector=None)`` aggregator (Liu et al., ICLR 2025)
    from the Gramian alone (:func:`mtl_fast.config_weights`): ``GramianWeightedAggregator(
    ConFIGWeighting(p))`` returns ``ConFIG(p)``'s vector. TorchJD has no such Weighting: its
    ConFIG pseudo-inverts the T×P matrix of unit gradients.

    Args:
        pref_vector: (T,) target cosine weights; None: ones (TorchJD's ``SumWeighting``).
        backend: "auto", "reference" or "cpu".

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import ConFIGWeighting
        >>> ConFIGWeighting()(torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
        tensor([1.5000, 0.7500])
    """

    def __init__(self, pref_vector: Tensor | None = None, *, backend: str | None = None) -> None:
        super().__init__()
        self.pref_vector = _check_pref(pref_vector)
        self.backend = backend

    def forward(self, gramian: Tensor, /) -> Tensor:
        with torch.no_grad():
            return config_weights(
                gramian, pref=_pref_on(self.pref_vector, gramian), backend=self.backend
            )

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(pref_vector={self.pref_vector!r})"


class ConFIG(GramianWeightedAggregator):  # type: ignore[misc]
    """Drop-in for TorchJD's ``ConFIG(pref_vector=None)`` Aggregator: the matrix J (T, P) in,
    the ConFIG update (P,) out, through the Gramian (:class:`ConFIGWeighting`) instead of the
    pseudo-inverse of the T×P unit-gradient matrix.

    Where the direction is undefined (two opposite gradients, a zero Jacobian), this returns 0;
    TorchJD's returns a direction of rounding noise there (docs/aggregators.md).

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import ConFIG
        >>> ConFIG()(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([1.5000, 1.5000])
    """

    def __init__(self, pref_vector: Tensor | None = None, *, backend: str | None = None) -> None:
        super().__init__(ConFIGWeighting(pref_vector, backend=backend))

    @property
    def pref_vector(self) -> Tensor | None:
        weighting = self.gramian_weighting
        assert isinstance(weighting, ConFIGWeighting)
        return weighting.pref_vector

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(pref_vector={self.pref_vector!r})"


class NashMTLWeighting(Weighting, Stateful):  # type: ignore[misc]
    """The weighting of TorchJD's ``NashMTL`` (Navon et al., ICML 2022) on
    :func:`mtl_fast.nash_mtl_step`: takes the matrix J (T, P), as TorchJD's does, and is
    stateful (:meth:`reset`).

    Every ``update_weights_every`` calls, α solves Kα = 1/α (K = JJᵀ) by damped Newton steps
    warm-started from the previous α; in between, the previous α is reused. Either way it is
    clipped to ‖Jᵀα‖ ≤ ``max_norm`` with the current J. Where no solution exists, or TorchJD's
    cvxpy/ECOS solve would fail, the previous α is kept, as TorchJD keeps it on failure; unlike
    TorchJD's, the solve does not fail on conflicting, duplicated or badly scaled gradients.

    Args:
        n_tasks: T, the number of rows of the matrices.
        max_norm: ‖Jᵀw‖ ≤ max_norm (0 disables the clipping).
        update_weights_every: calls between weight updates.
        optim_niter: TorchJD's number of convex approximations. Accepted for compatibility and
            checked, but unused: the Newton solve stops on its own (``max_iter``, ``tol``).
        max_iter, tol, backend: see :func:`mtl_fast.nash_mtl_step`.

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import NashMTLWeighting
        >>> NashMTLWeighting(n_tasks=2)(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([0.7071, 0.3536])
    """

    def __init__(
        self,
        n_tasks: int,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        *,
        max_iter: int = NASH_MAX_ITER,
        tol: float = NASH_TOL,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        require_positive_int("n_tasks", n_tasks, 1)
        require_positive_int("update_weights_every", update_weights_every, 1)
        require_positive_int("optim_niter", optim_niter, 1)
        nash_mtl_step(torch.eye(1), max_norm=max_norm, max_iter=max_iter, tol=tol)  # validate
        self.n_tasks = n_tasks
        self.max_norm = max_norm
        self.update_weights_every = update_weights_every
        self.optim_niter = optim_niter
        self.max_iter = max_iter
        self.tol = tol
        self.backend = backend
        self.reset()

    def reset(self) -> None:
        """Resets the state: α = 1 and the call counter to 0 (TorchJD's initial state)."""
        self.step = 0
        self.alpha: Tensor | None = None

    def forward(self, matrix: Tensor, /) -> Tensor:
        if matrix.ndim != 2 or matrix.shape[0] != self.n_tasks:
            raise ValueError(
                f"matrix must have shape ({self.n_tasks}, P) (n_tasks rows), got "
                f"{tuple(matrix.shape)}"
            )
        with torch.no_grad():
            K = gram(matrix, backend=self.backend)
            update = self.step % self.update_weights_every == 0
            weights, alpha = nash_mtl_step(
                K,
                prev_alpha=None if self.alpha is None else self.alpha.to(K.device),
                max_norm=self.max_norm,
                max_iter=self.max_iter if update else 0,
                tol=self.tol,
                backend=self.backend,
            )
            self.alpha = alpha.to(torch.float64)
            self.step += 1
            return weights.to(matrix.dtype)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self._options()})"

    def _options(self) -> str:
        """TorchJD's constructor arguments, as its ``__repr__`` shows them."""
        return (
            f"n_tasks={self.n_tasks}, max_norm={self.max_norm}, "
            f"update_weights_every={self.update_weights_every}, optim_niter={self.optim_niter}"
        )


class NashMTL(WeightedAggregator, Stateful):  # type: ignore[misc]
    """Drop-in for TorchJD's ``NashMTL(n_tasks, max_norm=1.0, update_weights_every=1,
    optim_niter=20)`` Aggregator, on :class:`NashMTLWeighting` (stateful: :meth:`reset`).

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import NashMTL
        >>> NashMTL(n_tasks=2)(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        tensor([0.7071, 0.7071])
    """

    def __init__(
        self,
        n_tasks: int,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        *,
        max_iter: int = NASH_MAX_ITER,
        tol: float = NASH_TOL,
        backend: str | None = None,
    ) -> None:
        options: dict[str, Any] = {"max_iter": max_iter, "tol": tol, "backend": backend}
        weighting = NashMTLWeighting(
            n_tasks, max_norm, update_weights_every, optim_niter, **options
        )
        super().__init__(weighting)

    def reset(self) -> None:
        """Resets the internal state of the algorithm."""
        self._nash().reset()

    def _nash(self) -> NashMTLWeighting:
        weighting = self.weighting
        assert isinstance(weighting, NashMTLWeighting)
        return weighting

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self._nash()._options()})"
