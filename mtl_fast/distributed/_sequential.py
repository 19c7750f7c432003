"""Per-task and selective task-group updates over the ranks: every rank takes the same
decisions (the same losses, the same groups, the same affinity) and the same steps."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from mtl_fast.distributed._comm import Communicator
from mtl_fast.distributed._grads import all_reduce_grads, broadcast_parameters
from mtl_fast.distributed._module import check_module, no_sync
from mtl_fast.distributed._over_ranks import OverRanks
from mtl_fast.optim.task_gradients import TaskGradients
from mtl_fast.strategies import PerTaskUpdates, SelectiveTaskGroupUpdates
from mtl_fast.strategies._base import loss_vector
from mtl_fast.strategies._sequential import Closure


class ReducingArena(TaskGradients):
    """A gradient arena whose row, once a ``with arena.task(t):`` block has filled it, is
    replaced by its mean over the ranks, together with the heads' ``.grad`` (one all-reduce when
    they share the row's dtype). A NaN/Inf on any rank thus reaches every rank's row, and
    every rank refuses the group step together.

    Args:
        params, num_tasks: as :class:`~mtl_fast.TaskGradients`.
        comm: the ranks' :class:`Communicator`.
        heads: the task-specific parameters whose ``.grad`` is averaged with the row.
    """

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        num_tasks: int,
        *,
        comm: Communicator,
        heads: Sequence[torch.Tensor],
    ) -> None:
        super().__init__(params, num_tasks)
        self.comm = comm
        self.heads = list(heads)

    @contextlib.contextmanager
    def task(self, t: int) -> Iterator[torch.Tensor]:
        with super().task(t) as row:
            yield row
        self._average(row)

    def _average(self, row: torch.Tensor) -> None:
        same = [p for p in self.heads if p.dtype == row.dtype and p.device == row.device]
        other = [p for p in self.heads if not (p.dtype == row.dtype and p.device == row.device)]
        sizes = [row.numel(), *[p.numel() for p in same]]
        flat = torch.cat(
            [
                row,
                *[
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                    for p in same
                ],
            ]
        )
        self.comm.all_reduce(flat, average=True)
        parts = flat.split(sizes)
        row.copy_(parts[0])
        for p, v in zip(same, parts[1:]):
            if p.grad is not None:
                p.grad.copy_(v.view_as(p.grad))
        if other:
            all_reduce_grads(self.comm, other)


def _rng_fingerprint(state: Any) -> float:
    """A float that differs between two random generator states (with high probability); the
    same in every process (``hash`` is not: hash(None) is an address in Python 3.11)."""
    return float(int.from_bytes(hashlib.sha256(repr(state).encode()).digest()[:6], "big"))


class _DistributedSequential(OverRanks):
    """Turns a sequential strategy into its distributed form (installed by ``_distribute``)."""

    comm: Communicator

    def _distribute(self, comm: Communicator, module: Any, broadcast: bool) -> None:
        s: Any = self
        self.comm = comm
        self.ddp = check_module(module)
        s.arena = ReducingArena(s.shared_params, s.num_tasks, comm=comm, heads=s._heads)
        P = sum(p.numel() for p in s.shared_params)
        comm.check_same(
            "num_tasks, the number of shared scalars and the random state (seed)",
            [s.num_tasks, P, _rng_fingerprint(s.rng.getstate())],
        )
        if broadcast:
            broadcast_parameters(comm, [*s.shared_params, *s.task_params])
        comm.log.reset()

    def no_sync(self) -> contextlib.AbstractContextManager[None]:
        """DDP's ``no_sync`` (:meth:`step` enters it itself), or nothing."""
        return no_sync(self.ddp)

    def _global(self, closure: Closure) -> Closure:
        """The closure, with each loss's value replaced by its mean over the ranks (its gradient
        stays the local one: L + (L̄ − L) with L̄ − L a constant), so that the strategy's
        decisions (loss ratios, the affinity, the groups) are the same on every rank."""
        comm = self.comm

        def wrapped() -> Sequence[torch.Tensor]:
            losses = list(closure())
            lv = loss_vector(losses)
            mean = comm.all_reduce(lv.double().to(comm.device), average=True).to(lv.device)
            return [
                (loss - loss.detach()) + m.to(loss.dtype).reshape(loss.shape)
                for loss, m in zip(losses, mean.unbind())
            ]

        return wrapped

    def step(self, closure: Closure) -> torch.Tensor:
        """One batch on every rank: the closure runs this rank's forward pass; the losses, the
        group gradients and the heads' gradients are averaged over the ranks."""
        with self.no_sync():
            out: torch.Tensor = super().step(self._global(closure))  # type: ignore[misc]
        return out


class DistributedPerTaskUpdates(_DistributedSequential, PerTaskUpdates):
    """:class:`~mtl_fast.strategies.PerTaskUpdates` over the ranks: the same groups everywhere
    (drawn from the shared seed), each group step's gradient averaged over the ranks before
    the replicated MultiAdam step. Same arguments, plus ``group``, ``comm``, ``module`` and
    ``broadcast`` as :class:`DistributedGramStrategy`."""


class DistributedSelectiveTaskGroupUpdates(_DistributedSequential, SelectiveTaskGroupUpdates):
    """:class:`~mtl_fast.strategies.SelectiveTaskGroupUpdates` over the ranks: the losses every
    forward pass sees are the ranks' means, so the loss ratios, the affinity matrix and the
    groups clustered from it are identical on every rank; group order from the shared seed.
    Same arguments, plus those of :class:`DistributedPerTaskUpdates`."""
