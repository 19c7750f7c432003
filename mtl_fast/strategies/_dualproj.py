"""DualProj: the preference-weighted gradient projected onto the dual cone of the task gradients
(Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning", NeurIPS 2017, Eq. 11;
TorchJD's ``DualProj``)."""

from __future__ import annotations

import torch

from mtl_fast.ops.dual_cone_weights import dualproj_weights
from mtl_fast.strategies._upgrad import DualConeStrategy


class DualProj(DualConeStrategy):
    """DualProj: the combination pᵀJ (default the mean gradient) projected onto the dual cone
    {x : Jx ≥ 0}, the closest direction to it that conflicts with no task.

    Weights from :func:`mtl_fast.dualproj_weights` on the Gram of the raw gradients (TorchJD's
    ``DualProj`` semantics); then combine-then-step as in
    :class:`~mtl_fast.strategies.DualConeStrategy`. Same arguments as
    :class:`~mtl_fast.strategies.UPGrad`.

    Example: see :class:`~mtl_fast.strategies.UPGrad`.
    """

    def _weights(self, K: torch.Tensor) -> torch.Tensor:
        return dualproj_weights(K, **self._solver_options(K))
