"""MGDA-UB: MGDA on the gradients w.r.t. the shared representation (Sener & Koltun, 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_fast._core import engine
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

    The T gradients w.r.t. Z come from one backward pass per task through the heads only
    (``batched=True``: one vmapped pass for all of them), written into a (T, numel(Z)) buffer
    kept across steps; the final pass backpropagates the T losses with c_t as their incoming
    gradients (no graph is built for the sum).

    Example: see :class:`~mtl_fast.strategies.MGDA`.
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
        features = self._check_features(features)
        if features.numel() == 0:
            raise ValueError(f"features is empty (shape {tuple(features.shape)})")
        self._check_trainable()
        lv = loss_vector(losses)
        G = self._feature_gradients(losses, features)
        self._lap("backward")
        return self._feature_step(losses, lv, G, self._gram(G))

    @staticmethod
    def _check_features(features: torch.Tensor | None) -> torch.Tensor:
        """Z, refused unless it is a tensor that requires grad."""
        if not isinstance(features, torch.Tensor):
            raise TypeError("features must be the trunk's output tensor Z (MGDA-UB needs it)")
        if not features.requires_grad:
            raise ValueError("features does not require grad: pass the trunk's output Z")
        return features

    def _feature_step(
        self, losses: Sequence[torch.Tensor], lv: torch.Tensor, G: torch.Tensor, K: torch.Tensor
    ) -> bool:
        """The step from the feature gradients G (T, numel(Z)), their Gram K and the loss values
        lv: the refusal for NaN/Inf, the weights, one backward pass of Σ_t c_t L_t, the refusal
        for a NaN/Inf shared gradient, diagnostics when due, the step record."""
        bad = self._bad_tasks(lv, K)
        if bad is not None:
            what = "feature gradient" if bad[1] == "gradient" else bad[1]
            return self._refuse(lv, bad[0], what)
        w, c = self._decide(K, lv)
        self._lap("combination")
        if not self._backward_all(losses, c):
            return self._refuse(lv, list(range(self.num_tasks)), "gradient")
        self._lap("backward")
        self._track_path()
        diag = self._diagnose(G, K, space="features") if self._diagnostics_due() else None
        self._record_step(lv, w, c, diag)
        return True

    def _feature_gradients(
        self, losses: Sequence[torch.Tensor], features: torch.Tensor
    ) -> torch.Tensor:
        """(T, numel(Z)) row t = ∇_Z L_t (zeros where L_t does not depend on Z)."""
        T, n = self.num_tasks, features.numel()
        G: torch.Tensor | None = getattr(self, "_G", None)
        if G is None or G.shape[1] != n or G.dtype != features.dtype or G.device != features.device:
            G = torch.empty((T, n), dtype=features.dtype, device=features.device)
            self._G = G
        if self.batched:
            L = torch.stack([loss.reshape(()) for loss in losses])
            eye = torch.eye(T, dtype=L.dtype, device=L.device)
            (g,) = torch.autograd.grad(
                L,
                features,
                grad_outputs=eye,
                is_grads_batched=True,
                retain_graph=True,
                allow_unused=True,
                materialize_grads=True,
            )
            G.copy_(g.reshape(T, n))
            return G
        for t, loss in enumerate(losses):
            (gz,) = engine.grad(loss, (features,), retain_graph=True)
            if gz is None:  # this loss does not depend on Z
                G[t].zero_()
            else:
                G[t].copy_(gz.reshape(-1))
        return G
