"""Weightings: the decision of a Gram-space method, K (T, T) and the losses (T,) in, (w, c) out.

A weighting is any callable ``(K, losses) -> (w, c)``: w the method's weights, c the
coefficients applied to the losses (the shared gradient written is Σ_t c_t ∇L_t). MGDA's c may
differ from w (``apply_to="normalized"``); for UPGrad, DualProj and fixed weights c = w. Since
every rank holds the same K and losses, every rank takes the same decision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mtl_fast.strategies import (
    MGDA,
    MGDAUB,
    DualConeStrategy,
    GramAggregator,
    LinearScalarization,
    Strategy,
)

Weighting = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def from_weights(fn: Callable[[torch.Tensor], torch.Tensor]) -> Weighting:
    """A weighting from a function K (T, T) → w (T,) that ignores the losses (c = w), e.g.
    ``lambda K: mtl_fast.upgrad_weights(K)``."""

    def weighting(K: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        del losses
        w = fn(K)
        return w, w

    return weighting


def fixed(weights: Sequence[float] | torch.Tensor) -> Weighting:
    """The constant weighting (linear scalarisation): c = w = ``weights`` (T,)."""
    w0 = torch.as_tensor(weights, dtype=torch.float64).detach().clone()

    def weighting(K: torch.Tensor, losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        del losses
        w = w0.to(device=K.device, dtype=K.dtype)
        return w, w

    return weighting


def weighting_of(strategy: Strategy) -> Weighting:
    """The weighting of a single-process combine-then-step strategy: :class:`MGDA` (its
    normalisation, ``apply_to``, solver options), :class:`DualConeStrategy` (UPGrad, DualProj:
    their preference and solver options), a :class:`GramAggregator` (PCGrad, IMTL-G, CAGrad,
    Nash-MTL, Aligned-MTL, ConFIG: their state, such as PCGrad's generator or Nash-MTL's α, evolves
    identically on every rank, which sees the same K) or :class:`LinearScalarization` (its fixed
    weights).

    Raises:
        TypeError: naming ``strategy`` for MGDA-UB (its Gram is over the features, see
            :class:`~mtl_fast.distributed.DistributedMGDAUB`) and for sequential strategies.
    """
    if isinstance(strategy, MGDAUB):
        raise TypeError("strategy: MGDA-UB solves on the features' Gram; use DistributedMGDAUB")
    if isinstance(strategy, (MGDA, DualConeStrategy, GramAggregator)):
        return strategy._decide
    if isinstance(strategy, LinearScalarization):
        return fixed(strategy.weights)
    raise TypeError(
        f"strategy: {type(strategy).__name__} has no Gram-space weighting "
        "(MGDA, UPGrad, DualProj, the Gram-space aggregators and LinearScalarization have)"
    )
