"""MGDA-UB: MGDA on the gradients w.r.t. the shared representation (Sener & Koltun, 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_fast.ops.gram import gram
from mtl_fast.strategies._base import check_losses, loss_vector
from mtl_fast.strategies._mgda import MGDA


class MGDAUB(MGDA):
    """MGDA-UB: the min-norm solve on the gradients w.r.t. the shared representation Z.

    Sener & Koltun's upper bound: with Z = trunk(x) (the ``features`` the user passes), the
    per-task gradients G_t = ∇_Z L_t are formed through the heads only, flattened over the
    batch *and* the feature dimensions (so the Gram K = G Gᵀ includes the batch), the weights
    are solved on K exactly as in :class:`MGDA` (same normalisations and ``apply_to``), and
    Σ_t c_t L_t is backpropagated once: one trunk backward per step instead of T. On CelebA
    (40 tasks) this cut training from 42.9 h to 1.6 h in the paper with equal or better error.

    Diagnostics are computed on G (``space="features"``): no extra backward pass.

    Example:
        >>> import torch
        >>> from mtl_fast.strategies import MGDAUB
        >>> trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList(
        ...     torch.nn.Linear(8, 1) for _ in range(2))
        >>> ub = MGDAUB(trunk.parameters(), heads.parameters(), num_tasks=2)
        >>> z = trunk(torch.randn(16, 4))
        >>> ub.backward([h(z).pow(2).mean() for h in heads], features=z)
        True
    """

    space = "features"

    def backward(
        self, losses: Sequence[torch.Tensor], /, *, features: torch.Tensor | None = None
    ) -> bool:
        """Write MGDA-UB's gradients.

        Args:
            losses: T scalar losses computed from ``features``.
            features: the shared representation Z (any shape, requires grad), the output of the
                trunk that every head reads.
        """
        losses = check_losses(losses, self.num_tasks)
        if not isinstance(features, torch.Tensor):
            raise TypeError("features must be the trunk's output tensor Z (MGDA-UB needs it)")
        if not features.requires_grad:
            raise ValueError("features does not require grad: pass the trunk's output Z")
        self._track_path()
        lv = loss_vector(losses)
        bad = self._nonfinite_losses(losses)
        if bad:
            return self._refuse(lv, bad, "loss")
        rows = []
        for loss in losses:
            (g,) = torch.autograd.grad(loss, features, retain_graph=True, allow_unused=True)
            rows.append(torch.zeros_like(features) if g is None else g)
        G = torch.stack(rows).reshape(self.num_tasks, -1)
        K = gram(G, backend=self.backend, check_finite=False)
        bad = self._nonfinite_gram(K)
        if bad:
            return self._refuse(lv, bad, "feature gradient")
        w, c = self._decide(K, lv)
        total = sum(ct * loss for ct, loss in zip(c.to(losses[0].dtype).unbind(), losses))
        assert isinstance(total, torch.Tensor)
        total.backward()
        if not self._shared_grads_finite():
            return self._refuse(lv, list(range(self.num_tasks)), "gradient")
        diag = self._diagnose(G, K, space="features") if self._diagnostics_due() else None
        self._record(lv, w, c, diag)
        return True
