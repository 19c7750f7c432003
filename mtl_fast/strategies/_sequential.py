"""Sequential-update strategies: a closure gives the T losses; several optimizer steps a batch."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from mtl_fast._core.adam_checks import check_hyper, check_lr
from mtl_fast._core.dispatch import resolve
from mtl_fast._core.options import spells
from mtl_fast._core.validate import (
    all_finite,
    require_backend_name,
    require_seed,
)
from mtl_fast.optim.multi_adam import MultiAdam
from mtl_fast.optim.task_gradients import TaskGradients
from mtl_fast.strategies._base import Strategy, check_losses, raise_or_skip
from mtl_fast.strategies._options import StrategyKwargs

if TYPE_CHECKING:
    from typing_extensions import Unpack

Closure = Callable[[], Sequence[torch.Tensor]]


def partition(order: Sequence[int], size: int) -> list[list[int]]:
    """Consecutive chunks of ``order`` of ``size`` (the last may be smaller)."""
    return [list(order[i : i + size]) for i in range(0, len(order), size)]


@spells(Strategy.__init__, StrategyKwargs)
class SequentialStrategy(Strategy):
    """Base of the strategies that own their optimizers and step group by group.

    The shared parameters get :class:`~mtl_fast.MultiAdam` (one Adam state per task or per
    group, see the subclasses), the task-specific parameters an ordinary ``torch.optim.Adam``
    (``AdamW`` when ``weight_decay > 0``) whose gradients are reset to ``None`` before each group
    step, so the heads of tasks outside the group are skipped exactly as torch skips a parameter
    without gradient. A group step backpropagates the sum of the group's losses once, with the
    shared gradient written straight into a row of the gradient arena.

    A group step whose gradient (shared or task-specific) holds NaN/Inf is refused before either
    optimizer moves: ``on_nonfinite="raise"`` raises :class:`~mtl_fast.NonFiniteError`,
    ``"skip"`` records the tasks in ``last.skipped`` and goes on with the next group.

    Note that the shared parameters become views of one flat buffer (``optimizer.flat``): the
    Parameter objects and values are kept, so the model is unaffected.

    Args:
        shared_params, task_params, num_tasks, diagnostics_every, on_nonfinite: see
            :class:`~mtl_fast.strategies.Strategy`.
        num_states: the number of Adam states of the shared parameters.
        seed: seeds the strategy's random draws (an int in [0, 2**32)).
        lr, betas, eps, weight_decay, head_lr, backend: see
            :class:`~mtl_fast.strategies.PerTaskUpdates`.
    """

    # The current task groups (set by the subclass; saved and restored with the state).
    groups: list[list[int]]

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor],
        num_tasks: int,
        *,
        num_states: int,
        seed: int,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        head_lr: float | None = None,
        backend: str | None = None,
        **options: Unpack[StrategyKwargs],
    ) -> None:
        super().__init__(shared_params, task_params, num_tasks, **options)
        # Every argument is judged before MultiAdam re-points the parameters at its buffer.
        require_seed("seed", seed)
        device = self.shared_params[0].device
        hyper = check_hyper(lr, betas, eps, weight_decay, device)
        hlr = lr if head_lr is None else check_lr(head_lr, device, read_value=True, name="head_lr")
        betas, eps, weight_decay = (hyper.beta1, hyper.beta2), hyper.eps, hyper.weight_decay
        require_backend_name("backend", backend)
        resolve("multi_adam", backend, self.shared_params[0].device)  # explicit: can it run?
        self.optimizer = MultiAdam(
            self.shared_params,
            num_tasks=num_states,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            on_nonfinite="ignore",  # checked here, before either optimizer moves
            backend=backend,
        )
        # Created after MultiAdam flattened the parameters: the rows share its layout.
        self.arena = TaskGradients(self.shared_params, num_tasks)
        heads = list(self.task_params)
        self.head_optimizer: torch.optim.Optimizer | None = None
        if heads:
            if weight_decay > 0:
                self.head_optimizer = torch.optim.AdamW(
                    heads, lr=hlr, betas=betas, eps=eps, weight_decay=weight_decay
                )
            else:
                self.head_optimizer = torch.optim.Adam(heads, lr=hlr, betas=betas, eps=eps)
        self._heads = heads
        self.seed = seed
        self.rng = random.Random(seed)

    # -- one group step ----------------------------------------------------------------------
    def _forward(self, closure: Closure) -> list[torch.Tensor]:
        return check_losses(closure(), self.num_tasks)

    def _group_step(
        self,
        losses: Sequence[torch.Tensor],
        group: Sequence[int],
        state_tasks: Sequence[int],
        state_weights: Sequence[float],
    ) -> bool:
        """Backpropagate Σ_{t∈group} L_t, then step MultiAdam (states ``state_tasks``, the group
        gradient fed to each with ``state_weights``) and the head optimizer."""
        if self.head_optimizer is not None:
            self.head_optimizer.zero_grad(set_to_none=True)
        row = group[0]
        total = losses[group[0]]
        for t in group[1:]:
            total = total + losses[t]
        with self.arena.task(row):
            total.backward()
        g = self.arena.J[row]
        if self.on_nonfinite != "ignore" and not self._grads_finite(g):
            if self.head_optimizer is not None:
                self.head_optimizer.zero_grad(set_to_none=True)
            raise_or_skip(self.on_nonfinite, "gradient", list(group))
            self.last.skipped.extend(group)
            return False
        # Every stepped state reads the same arena row: an expanded view, not |S| copies.
        G = g.unsqueeze(0).expand(len(state_tasks), -1)
        self.optimizer.step(G, tasks=list(state_tasks), weights=list(state_weights))
        if self.head_optimizer is not None:
            self.head_optimizer.step()
            self.head_optimizer.zero_grad(set_to_none=True)
        self._track_path()
        return True

    def _grads_finite(self, g: torch.Tensor) -> bool:
        """Whether the group's shared row and the heads' ``.grad`` are finite: one sum per
        tensor and one host read (a NaN/Inf makes the total non-finite; only then, or on an
        overflow of finite values, is each tensor checked exactly). Was one read per tensor."""
        heads = [p.grad for p in self._heads if p.grad is not None]
        sums = torch.stack([g.sum(), *[h.sum().to(g.dtype) for h in heads]])
        if bool(torch.isfinite(sums.sum())):
            return True
        return all_finite(g) and all(all_finite(h) for h in heads)

    def _first_forward(self, closure: Closure) -> list[torch.Tensor]:
        """The step's first ``closure()``, checked before anything changes: a step refused for
        its arguments (a bad closure, a parameter frozen since construction) leaves parameters,
        ``.grad``, optimizers and the strategy's state as they were. (A closure that returns
        valid losses first and invalid ones later is refused mid-step, after the groups before
        it have stepped.)"""
        if not callable(closure):
            raise TypeError(
                f"closure must be a callable returning the {self.num_tasks} losses, got "
                f"{type(closure).__name__}"
            )
        self._check_trainable()
        return self._forward(closure)

    def _extra_diagnostics(self, losses: Sequence[torch.Tensor]) -> None:
        """Diagnostics at the current point from the losses of a forward pass of their own
        (one extra forward and T backward passes)."""
        for t, loss in enumerate(losses):
            with self.arena.task(t):
                torch.autograd.backward(loss, inputs=self.shared_params, retain_graph=True)
        self.last.diagnostics = self._diagnose(self.arena.J)

    def step(self, closure: Closure) -> torch.Tensor:
        """One batch: the closure runs the forward pass on it and returns the T losses; it is
        called again before every group step. Returns the (T,) losses of the first call."""
        raise NotImplementedError

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["optimizer"] = self.optimizer.state_dict()
        state["head_optimizer"] = (
            None if self.head_optimizer is None else self.head_optimizer.state_dict()
        )
        state["rng"] = self.rng.getstate()
        state["groups"] = [list(g) for g in self.groups]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.head_optimizer is not None:
            self.head_optimizer.load_state_dict(state["head_optimizer"])
        self.rng.setstate(state["rng"])
        self.groups = [list(g) for g in state["groups"]]

    def _record(self, first: torch.Tensor, groups: list[list[int]]) -> None:
        self.num_steps += 1
        self.last.step = self.num_steps
        self.last.losses = first
        self.last.groups = [list(g) for g in groups]

    def _start(self) -> None:
        self.last.skipped = []
        self.last.diagnostics = None
