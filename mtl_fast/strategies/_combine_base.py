"""Combine-then-step strategies: T losses in, ``.grad`` of Σ_t c_t L_t out; the user steps."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_fast._core.validate import all_finite
from mtl_fast.optim.task_gradients import TaskGradients
from mtl_fast.strategies._base import Strategy, loss_vector, raise_or_skip


class CombineStrategy(Strategy):
    """Base of the strategies that write gradients and leave the step to the user's optimizer.

    After :meth:`backward`, every parameter's ``.grad`` holds the gradient of Σ_t c_t L_t, where
    c = ``last.loss_scales`` is what the method chose: the shared parameters get the combined
    direction Σ_t c_t ∇L_t, each head its own task's c_t ∇_{θ_t} L_t. Gradients are accumulated
    into existing ``.grad`` as autograd does, so call the optimizer's ``zero_grad()`` first, as
    usual.
    """

    def backward(
        self, losses: Sequence[torch.Tensor], /, *, features: torch.Tensor | None = None
    ) -> bool:
        """Turn the T losses into ``.grad``; returns False if the step was refused (skip mode)."""
        raise NotImplementedError

    def _arena(self) -> TaskGradients:
        arena: TaskGradients | None = getattr(self, "_arena_cache", None)
        if arena is None:
            arena = TaskGradients(self.shared_params, self.num_tasks)
            self._arena_cache = arena
        return arena

    def _fill_arena(self, losses: Sequence[torch.Tensor]) -> TaskGradients:
        """Row t of the arena = ∇_shared L_t; heads untouched; the graph is kept."""
        arena = self._arena()
        for t, loss in enumerate(losses):
            with arena.task(t):
                torch.autograd.backward(loss, inputs=self.shared_params, retain_graph=True)
        return arena

    def _refuse(self, losses: torch.Tensor, bad: list[int], what: str) -> bool:
        """Refuse a step: clear every ``.grad`` (so the user's optimizer skips it), then raise
        unless ``on_nonfinite="skip"``."""
        for p in [*self.shared_params, *self.task_params]:
            p.grad = None
        raise_or_skip(self.on_nonfinite, what, bad)
        self.last.losses = losses
        self.last.skipped = bad
        return False

    def _backward_heads(self, losses: Sequence[torch.Tensor], scales: torch.Tensor) -> None:
        """Task-specific ``.grad`` += ∇ Σ_t c_t L_t (heads only: no pass through the trunk)."""
        heads = [p for p in self.task_params if p.requires_grad]
        if not heads:
            return
        total = sum(c * loss for c, loss in zip(scales.to(losses[0].dtype).unbind(), losses))
        assert isinstance(total, torch.Tensor)
        torch.autograd.backward(total, inputs=heads)

    def _accumulate_shared(self, arena: TaskGradients, d: torch.Tensor) -> None:
        """Shared ``.grad`` += the flat direction d (P,), as autograd would accumulate."""
        for p, v in zip(self.shared_params, arena._views(d.to(arena.J.dtype))):
            if p.grad is None:
                p.grad = v
            else:
                p.grad.add_(v)

    def _shared_grads_finite(self) -> bool:
        if self.on_nonfinite == "ignore":
            return True
        grads = [p.grad for p in self.shared_params if p.grad is not None]
        return all(all_finite(g) for g in grads)

    def _nonfinite_gram(self, K: torch.Tensor) -> list[int]:
        """Tasks whose gradient is not finite, read off the Gram's diagonal."""
        if self.on_nonfinite == "ignore":
            return []
        return [int(i) for i in torch.nonzero(~torch.isfinite(K.diagonal())).flatten().tolist()]

    def _nonfinite_losses(self, losses: Sequence[torch.Tensor]) -> list[int]:
        if self.on_nonfinite == "ignore":
            return []
        v = loss_vector(losses)
        return [int(i) for i in torch.nonzero(~torch.isfinite(v)).flatten().tolist()]
