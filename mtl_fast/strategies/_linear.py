"""Linear scalarisation: the baseline Σ_t w_t L_t with fixed weights."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from mtl_fast._core.options import spells
from mtl_fast._core.validate import nonfinite_rows
from mtl_fast.strategies._base import check_losses, check_strategy_options, loss_vector
from mtl_fast.strategies._combine_base import CombineStrategy
from mtl_fast.strategies._options import StrategyKwargs

if TYPE_CHECKING:
    from typing_extensions import Unpack


def fixed_weights(weights: object, num_tasks: int) -> torch.Tensor:
    """(T,) fp32 finite weights from a sequence or tensor (None: all 1); errors name them."""
    if weights is None:
        return torch.ones(num_tasks, dtype=torch.float32)
    if isinstance(weights, (str, bytes)):
        raise TypeError(f"weights must be {num_tasks} numbers, got {weights!r}")
    try:
        w = torch.as_tensor(weights, dtype=torch.float32).detach().clone()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"weights must be {num_tasks} numbers, got {weights!r} ({exc})") from None
    if w.shape != (num_tasks,):
        raise ValueError(f"weights must have shape ({num_tasks},), got {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"weights must be finite, got {w.tolist()}")
    return w


@spells(CombineStrategy.__init__, StrategyKwargs)
class LinearScalarization(CombineStrategy):
    """Linear scalarisation: gradients of L = Σ_t w_t L_t with fixed weights (default all 1).

    One backward pass per step. On a diagnostics step the T per-task gradients are needed, so
    that step runs T backward passes through the trunk into the gradient arena instead (the
    gradient written is the same Σ_t w_t ∇L_t).

    Args:
        shared_params, task_params, num_tasks, diagnostics_every, on_nonfinite: see
            :class:`~mtl_fast.strategies.Strategy`.
        weights: (T,) fixed weights w_t (default 1 each).

    Example:
        >>> import torch
        >>> from mtl_fast.strategies import LinearScalarization
        >>> trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList(
        ...     torch.nn.Linear(8, 1) for _ in range(2))
        >>> ls = LinearScalarization(
        ...     trunk.parameters(), heads.parameters(), num_tasks=2, weights=[1.0, 0.5])
        >>> z = trunk(torch.randn(16, 4))
        >>> ls.backward([h(z).pow(2).mean() for h in heads])
        True
        >>> ls.last.loss_scales
        tensor([1.0000, 0.5000])
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        weights: Sequence[float] | torch.Tensor | None = None,
        **options: Unpack[StrategyKwargs],
    ) -> None:
        num_tasks = check_strategy_options(num_tasks, **options)
        w = fixed_weights(weights, num_tasks)
        # One backward pass per step (per task on a diagnostics step): no batched fill.
        super().__init__(shared_params, task_params, num_tasks, batched=False, **options)
        self.weights = w.to(self.shared_params[0].device)

    def backward(
        self, losses: Sequence[torch.Tensor], /, *, features: torch.Tensor | None = None
    ) -> bool:
        """Write the gradients of Σ_t w_t L_t. ``features`` is ignored (accepted for symmetry)."""
        del features
        losses = check_losses(losses, self.num_tasks)
        self._check_trainable()
        lv = self._loss_values(losses)
        bad = self._bad_tasks(lv, None)
        if bad is not None:
            return self._refuse(lv, *bad)
        diag = None
        if self._diagnostics_due():
            arena = self._fill_arena(losses)
            rows = nonfinite_rows(arena.J) if self.on_nonfinite != "ignore" else []
            if rows:
                return self._refuse(lv, rows, "gradient")
            K = self._gram(arena.J)
            self._track_path()
            diag = self._diagnose(arena.J, K)
            d = self._combined(arena.J, self.weights, reuse=self._shared_grads_empty())
            self._backward_heads(losses, self.weights)
            self._accumulate_shared(arena, d)
        else:
            if not self._backward_all(losses, self.weights):
                return self._refuse(lv, list(range(self.num_tasks)), "gradient")
            self._track_path()
        self._record_step(lv, self.weights, self.weights, diag)
        return True

    def _loss_values(self, losses: Sequence[torch.Tensor]) -> torch.Tensor:
        """(T,) the loss values the step is judged on and recorded with."""
        return loss_vector(losses)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["weights"] = self.weights.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.weights.copy_(state["weights"])
