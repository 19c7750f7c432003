"""TorchJD's MGDA, UPGrad and DualProj on mtl_fast's solvers.

MGDA: :class:`MGDAWeighting` is TorchJD's ``MGDAWeighting`` solved by :func:`mtl_fast.min_norm`
(sync-free on a GPU; see docs/integrations.md)::

    # from torchjd.aggregation import MGDAWeighting
    from mtl_fast.integrations.torchjd import MGDAWeighting
    weights = MGDAWeighting()(engine.compute_gramian(losses))      # autogram, or
    jac_to_grad(params, GramianWeightedAggregator(MGDAWeighting()))  # autojac

UPGrad and DualProj: TorchJD's UPGrad and DualProj solve one quadratic program per task with quadprog on the CPU, in
float64, moving the Gram matrix to the host on every step. This module gives TorchJD's own
classes mtl_fast's batched solver (:func:`mtl_fast.dual_cone_projection`: the compiled CPU
solver on CPU tensors, the Triton kernel on a GPU, no host round trip), with TorchJD's names,
constructor arguments and semantics (trace normalisation, ridge ``reg_eps``, preference vector):

- :class:`Projector` — a ``torchjd.linalg.DualConeProjector`` with the constructor of
  ``QuadprogProjector`` (``norm_eps``, ``reg_eps``), usable wherever TorchJD takes a projector:
  ``torchjd.aggregation.UPGrad(projector=Projector())``;
- :class:`UPGradWeighting`, :class:`DualProjWeighting` — TorchJD's weightings (autogram) with
  :class:`Projector` as their default projector;
- :class:`UPGrad`, :class:`DualProj` — TorchJD's aggregators (autojac), likewise.

The swap, with autogram (per-sample losses, T = the batch)::

    from mtl_fast.integrations.torchjd import UPGradWeighting  # was: torchjd.aggregation
    weighting = UPGradWeighting()
    gramian = engine.compute_gramian(losses)
    losses.backward(weighting(gramian))

and with autojac::

    from mtl_fast.integrations.torchjd import UPGrad  # was: from torchjd.aggregation import UPGrad
    mtl_backward(losses, features=features)
    jac_to_grad(shared_params, UPGrad())

Weights agree with TorchJD's to about 1e-9 relative when TorchJD gets the same float64 Gram
(both solve the QP exactly; ours normalises G in float64 where TorchJD rounds G / tr G to G's
dtype first: from a float32 Gram the two differ by up to ~1e-4 relative, TorchJD's rounding
amplified by cond(G̃) ≤ 1e4). Needs TorchJD (``pip install 'mtl-fast[peers]'``); quadprog is not
needed by these classes.
"""

from __future__ import annotations

from typing import Any, overload

import torch
from torchjd.aggregation import DualProj as _DualProj
from torchjd.aggregation import DualProjWeighting as _DualProjWeighting
from torchjd.aggregation import UPGrad as _UPGrad
from torchjd.aggregation import UPGradWeighting as _UPGradWeighting
from torchjd.aggregation import Weighting
from torchjd.linalg import DualConeProjector

from mtl_fast.ops.dual_cone import (
    DEFAULT_MAX_ITER,
    DEFAULT_NORM_EPS,
    DEFAULT_REG_EPS,
    DEFAULT_TOL,
    dual_cone_projection,
)
from mtl_fast.ops.min_norm import min_norm

__all__ = [
    "DualProj",
    "DualProjWeighting",
    "MGDAWeighting",
    "Projector",
    "UPGrad",
    "UPGradWeighting",
]


class _NonNegative:
    """A float attribute that refuses a negative value, with ``QuadprogProjector``'s message;
    the value is kept under the name with a leading underscore."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = f"_{name}"

    @overload
    def __get__(self, obj: None, owner: type) -> _NonNegative: ...
    @overload
    def __get__(self, obj: object, owner: type) -> float: ...
    def __get__(self, obj: object, owner: type) -> _NonNegative | float:
        if obj is None:
            return self
        value: float = getattr(obj, self.slot)
        return value

    def __set__(self, obj: object, value: float) -> None:
        if value < 0.0:
            raise ValueError(f"{self.name} must be non-negative, but got {value}.")
        setattr(obj, self.slot, value)


class Projector(DualConeProjector):
    r"""TorchJD ``DualConeProjector`` on :func:`mtl_fast.dual_cone_projection`.

    ``__call__(U, G)`` returns, for every vector u along the last dimension of U, the weights
    v = argmin_v vᵀG̃v subject to v ≥ u with G̃ = G / tr(G) + reg_eps·I (reg_eps·I when
    tr(G) < norm_eps): the projection of Jᵀu onto the dual cone of the rows of J is Jᵀv
    (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", 2024, Prop. 1) —
    TorchJD's ``QuadprogProjector`` problem, solved in float64 on G's device by block principal
    pivoting instead of one quadprog call per vector on the host.

    Args:
        norm_eps: traces below this give the identity metric (``QuadprogProjector``'s default).
        reg_eps: ridge added after normalisation (``QuadprogProjector``'s default).
        max_iter, tol, backend: passed to :func:`mtl_fast.dual_cone_projection` (keyword-only
            extras; the defaults are the op's).

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import Projector
        >>> G = torch.tensor([[1.0, -2.0], [-2.0, 9.0]])
        >>> Projector()(torch.eye(2), G)
        tensor([[1.0000, 0.2222],
                [1.9980, 1.0000]])
    """

    norm_eps = _NonNegative()
    reg_eps = _NonNegative()

    def __init__(
        self,
        *,
        norm_eps: float = DEFAULT_NORM_EPS,
        reg_eps: float = DEFAULT_REG_EPS,
        max_iter: int = DEFAULT_MAX_ITER,
        tol: float = DEFAULT_TOL,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        self.norm_eps = norm_eps
        self.reg_eps = reg_eps
        self.max_iter = max_iter
        self.tol = tol
        self.backend = backend

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(norm_eps={self.norm_eps}, reg_eps={self.reg_eps})"

    def __call__(self, U: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """Projection weights of every vector along U's last dimension, U's shape, G's dtype
        and device (no gradient flows through them, as with quadprog)."""
        with torch.no_grad():
            W = dual_cone_projection(
                U.to(G.device),
                G,
                norm_eps=self.norm_eps,
                reg_eps=self.reg_eps,
                max_iter=self.max_iter,
                tol=self.tol,
                backend=self.backend,
            )
        return W.to(G.dtype)


def _ours(projector: DualConeProjector | None) -> DualConeProjector:
    return Projector() if projector is None else projector


class _ProjectorDefault:
    """TorchJD's constructor ``(pref_vector=None, projector=None)`` with :class:`Projector` in
    place of TorchJD's default projector; also when ``projector`` is later set to None."""

    def __init__(
        self, pref_vector: torch.Tensor | None = None, projector: DualConeProjector | None = None
    ) -> None:
        super().__init__(pref_vector, projector=_ours(projector))  # type: ignore[call-arg]


class _WeightingProjector(_ProjectorDefault):
    """A weighting's ``projector``, kept on the weighting itself."""

    _projector: DualConeProjector

    @property
    def projector(self) -> DualConeProjector:
        return self._projector

    @projector.setter
    def projector(self, value: DualConeProjector | None) -> None:
        self._projector = _ours(value)


class _AggregatorProjector(_ProjectorDefault):
    """An aggregator's ``projector``: that of its Gramian weighting."""

    gramian_weighting: Any

    @property
    def projector(self) -> DualConeProjector:
        return self.gramian_weighting.projector  # type: ignore[no-any-return]

    @projector.setter
    def projector(self, value: DualConeProjector | None) -> None:
        self.gramian_weighting.projector = _ours(value)


class UPGradWeighting(_WeightingProjector, _UPGradWeighting):
    """TorchJD's ``UPGradWeighting`` (same arguments and semantics) whose default projector is
    :class:`Projector`: w = Σ_i v_i, v_i the projection weights of p_i e_i.

    Example (with :class:`DualProjWeighting`, used alike, on the same Gramian):
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import DualProjWeighting, UPGradWeighting
        >>> G = torch.tensor([[1.0, -2.0], [-2.0, 9.0]])
        >>> UPGradWeighting()(G), DualProjWeighting()(G)
        (tensor([1.4990, 0.6111]), tensor([0.9990, 0.5000]))
    """


class DualProjWeighting(_WeightingProjector, _DualProjWeighting):
    """TorchJD's ``DualProjWeighting`` (same arguments and semantics) whose default projector is
    :class:`Projector`: w = the projection weights of the preference vector.

    Example: see :class:`UPGradWeighting`.
    """


class UPGrad(_AggregatorProjector, _UPGrad):
    """TorchJD's ``UPGrad`` aggregator (same arguments) whose default projector is
    :class:`Projector`.

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import UPGrad
        >>> UPGrad()(torch.tensor([[-4.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
        tensor([0.2929, 1.9004, 1.9004])
    """


class DualProj(_AggregatorProjector, _DualProj):
    """TorchJD's ``DualProj`` aggregator (same arguments) whose default projector is
    :class:`Projector`."""


def _positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be positive, but got {value}.")
    return float(value)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, but got {value}.")
    return value


class MGDAWeighting(Weighting[torch.Tensor]):
    """TorchJD's ``MGDAWeighting`` (min-norm weights on the simplex from the Gramian) solved by
    :func:`mtl_fast.min_norm`.

    Same constructor as ``torchjd.aggregation.MGDAWeighting``; how the arguments map:

    - ``epsilon`` (TorchJD: stop the Frank-Wolfe loop once its step size γ̂ falls below it)
      becomes mtl_fast's ``tol``: stop once the duality gap 2(wᵀKw − min_i (Kw)_i) is at most
      ``epsilon · max_i K_ii``. The gap bounds the distance to the optimal objective, so the
      stop is a certificate; γ̂ < ε is not (a Frank-Wolfe loop can take small steps far from
      the optimum). With the default 1e-3 the weights are at least as close to the optimum as
      TorchJD's, and usually much closer (the away-step solver with its face correction
      converges in about T + 1 iterations).
    - ``max_iters`` becomes ``max_iter``, the iteration budget.
    - ``backend`` (keyword-only, mtl_fast's own): which mtl_fast backend solves ("auto": the
      compiled CPU solver on CPU tensors, Triton/CUDA on a GPU).

    The solve never reads a value back to the host on a GPU (TorchJD's loop does, twice per
    iteration), so the whole weighting can be captured in a CUDA graph. Weights come back in the
    Gramian's dtype, on its device; they carry no gradient (as TorchJD's, they are a constant of
    the step).

    Args:
        epsilon: > 0, the relative duality-gap tolerance (default 1e-3, TorchJD's default).
        max_iters: > 0, the iteration budget (default 100, TorchJD's default).
        backend: mtl_fast backend of the solve (default "auto").

    Example:
        >>> import torch
        >>> from mtl_fast.integrations.torchjd import MGDAWeighting
        >>> G = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
        >>> MGDAWeighting()(G)
        tensor([0.5000, 0.5000])
    """

    def __init__(
        self, epsilon: float = 0.001, max_iters: int = 100, *, backend: str | None = None
    ) -> None:
        super().__init__()
        self.epsilon = _positive_float("epsilon", epsilon)
        self.max_iters = _positive_int("max_iters", max_iters)
        self.backend = backend

    def forward(self, gramian: torch.Tensor, /) -> torch.Tensor:
        """(m,) weights on the simplex from the (m, m) Gramian."""
        w = min_norm(gramian, max_iter=self.max_iters, tol=self.epsilon, backend=self.backend)
        return w.to(gramian.dtype)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(epsilon={self.epsilon}, max_iters={self.max_iters}"
            + ("" if self.backend is None else f", backend={self.backend!r}")
            + ")"
        )
