"""Per-task updates with per-task Adam states (Pascal et al.), with random task grouping."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

from mtl_fast._core.options import spells
from mtl_fast._core.validate import require_bool, require_positive_int
from mtl_fast.strategies._base import check_strategy_options, loss_vector
from mtl_fast.strategies._options import SequentialKwargs
from mtl_fast.strategies._sequential import Closure, SequentialStrategy, partition

if TYPE_CHECKING:
    from typing_extensions import Unpack


@spells(SequentialStrategy.__init__, SequentialKwargs)
class PerTaskUpdates(SequentialStrategy):
    """One optimizer step per task (or per task group) in sequence, each with a fresh forward.

    Pascal et al., "Improved optimization strategies for deep Multi-Task Networks": instead of
    one step on Σ_t L_t, take a step per task, and with Adam give every task its own moments for
    the shared parameters (:class:`~mtl_fast.MultiAdam`, S = {t}). Random grouping trades
    quality for time: the T tasks are partitioned at random (seeded) into groups of
    ``group_size`` k (the last may be smaller); each group takes one step on the sum of its
    losses; k = 1 is fully per-task, k = T the usual summed step.

    Which Adam state a group step uses for the shared parameters:

    - ``redraw=False`` (the official code: the partition is drawn once): **one state per
      group**; group i always steps state i. For k = 1 these are the per-task states, for k = T
      this is ordinary Adam on Σ_t L_t.
    - ``redraw=True`` (a new partition every step): **one state per task**; a group's gradient
      is fed to the state of each of its tasks and the update averages their directions
      (weights 1/|g|). Tasks that were always grouped together therefore hold identical states
      and this reduces to the rule above; k = 1 is again per-task Adam and k = T ordinary Adam.

    Heads use ordinary Adam (``head_lr``, default ``lr``); a head whose task is not in the
    group gets no gradient and is skipped.

    Args:
        shared_params, task_params, num_tasks, diagnostics_every, on_nonfinite: see
            :class:`~mtl_fast.strategies.Strategy`. A diagnostics step with k = 1 uses the
            per-task gradients of that step (each taken at the point its own step starts from);
            with k > 1 it costs one extra forward and T backward passes.
        group_size: k ≥ 1 (clipped to T).
        redraw: draw a new partition at every step.
        seed: seeds the partition draws (an int in [0, 2**32)).
        lr, betas, eps, weight_decay: Adam(W) hyperparameters of both optimizers.
        head_lr: learning rate of the heads (default ``lr``).
        backend: backend of the MultiAdam step.

    Example:
        >>> import torch
        >>> from mtl_fast.strategies import PerTaskUpdates
        >>> trunk, heads = torch.nn.Linear(4, 8), torch.nn.ModuleList(
        ...     torch.nn.Linear(8, 1) for _ in range(3))
        >>> x = torch.randn(16, 4)
        >>> def closure():
        ...     z = trunk(x)
        ...     return [h(z).pow(2).mean() for h in heads]
        >>> pt = PerTaskUpdates(trunk.parameters(), heads.parameters(), num_tasks=3, lr=1e-2)
        >>> pt.step(closure).shape
        torch.Size([3])
        >>> pt.last.groups
        [[0], [1], [2]]
        >>> from mtl_fast.strategies import SelectiveTaskGroupUpdates  # used alike
        >>> stgu = SelectiveTaskGroupUpdates(trunk.parameters(), heads.parameters(),
        ...                                  num_tasks=3, warmup=1)
        >>> _ = stgu.step(closure); _ = stgu.step(closure)
        >>> stgu.last.affinity.shape
        torch.Size([3, 3])
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        group_size: int = 1,
        redraw: bool = False,
        seed: int = 0,
        **options: Unpack[SequentialKwargs],
    ) -> None:
        num_tasks = check_strategy_options(num_tasks, **options)
        group_size = min(require_positive_int("group_size", group_size, 1), num_tasks)
        require_bool("redraw", redraw)
        num_states = num_tasks if redraw else -(-num_tasks // group_size)  # one per group
        super().__init__(
            shared_params, task_params, num_tasks, num_states=num_states, seed=seed, **options
        )
        self.group_size = group_size
        self.redraw = redraw
        self.groups = self._draw() if group_size > 1 else partition(range(num_tasks), 1)

    def _draw(self) -> list[list[int]]:
        order = list(range(self.num_tasks))
        self.rng.shuffle(order)
        return partition(order, self.group_size)

    def step(self, closure: Closure) -> torch.Tensor:
        """One batch: one step per group, each after a fresh ``closure()`` (the T losses).

        Returns:
            (T,) the losses of the first forward pass (detached).
        """
        pending: list[torch.Tensor] | None = self._first_forward(closure)
        self._start()
        if self.redraw and self.num_steps > 0 and self.group_size > 1:
            self.groups = self._draw()
        singletons = self.group_size == 1
        due = self._diagnostics_due()
        if due and not singletons:
            assert pending is not None
            self._extra_diagnostics(pending)  # its own forward pass: the first one
            pending = None
        first: torch.Tensor | None = None
        for i, g in enumerate(self.groups):
            losses = pending if pending is not None else self._forward(closure)
            pending = None
            if first is None:
                first = loss_vector(losses)
            if self.redraw:
                self._group_step(losses, g, g, [1.0 / len(g)] * len(g))
            else:
                self._group_step(losses, g, [i], [1.0])
        if due and singletons:
            self.last.diagnostics = self._diagnose(self.arena.J)
        assert first is not None
        self._record(first, self.groups)
        return first
