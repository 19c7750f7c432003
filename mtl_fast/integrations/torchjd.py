"""mtl_fast's solvers inside TorchJD: drop-in ``torchjd.aggregation.Weighting`` subclasses.

A TorchJD user switches solver with one import line::

    # from torchjd.aggregation import MGDAWeighting
    from mtl_fast.integrations.torchjd import MGDAWeighting

and uses it wherever TorchJD takes a Gramian weighting: with autogram
(``weights = MGDAWeighting()(engine.compute_gramian(losses))``) or with autojac through
``jac_to_grad(params, GramianWeightedAggregator(MGDAWeighting()))``. See docs/integrations.md.

One class per weighting, each a thin ``forward(gramian) -> weights`` over an mtl_fast op, with
the constructor arguments of the TorchJD class it replaces. Importing this module without TorchJD
raises ImportError saying how to install it.
"""

from __future__ import annotations

import torch

try:
    from torchjd.aggregation import Weighting
except ImportError as exc:  # pragma: no cover - exercised by a test that hides torchjd
    raise ImportError(
        "mtl_fast.integrations.torchjd needs TorchJD: pip install 'mtl-fast[peers]' "
        f"(importing torchjd failed: {exc})"
    ) from exc

from mtl_fast.ops.min_norm import min_norm

__all__ = ["MGDAWeighting"]


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
