"""MGDA-UB and linear scalarisation over the ranks: a (T, T) or (T,) all-reduce for the
decision, then ordinary data-parallel gradients (DDP's, or one all-reduce of our own)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from mtl_fast.distributed._comm import Communicator
from mtl_fast.distributed._grads import all_reduce_grads, broadcast_parameters
from mtl_fast.distributed._module import check_module
from mtl_fast.distributed._over_ranks import OverRanks
from mtl_fast.strategies import MGDAUB, LinearScalarization
from mtl_fast.strategies._base import check_losses, loss_vector


class _DataParallel(OverRanks):
    """What the two share: the communicator, the module, and averaging every ``.grad``."""

    comm: Communicator
    shared_params: list[torch.Tensor]
    task_params: list[torch.Tensor]

    def _distribute(self, comm: Communicator, module: Any, broadcast: bool) -> None:
        self.comm = comm
        self.ddp = check_module(module)
        P = sum(p.numel() for p in self.shared_params)
        self.comm.check_same("num_tasks and the number of shared scalars", [self.num_tasks, P])  # type: ignore[attr-defined]
        if broadcast:
            broadcast_parameters(self.comm, [*self.shared_params, *self.task_params])
        self.comm.log.reset()

    def _average_grads(self) -> None:
        """DDP averaged the gradients in the backward pass; without it, one all-reduce here."""
        if self.ddp is None:
            params = [p for p in [*self.shared_params, *self.task_params] if p.requires_grad]
            all_reduce_grads(self.comm, params)

    def _mean_losses(self, lv: torch.Tensor) -> torch.Tensor:
        g = self.comm.all_reduce(lv.double().to(self.comm.device), average=True)
        return g.to(lv.device, lv.dtype)


class DistributedMGDAUB(_DataParallel, MGDAUB):
    """MGDA-UB over the ranks (Sener & Koltun's upper bound; :class:`~mtl_fast.strategies.MGDAUB`).

    The gradients w.r.t. the features are per sample, so the Gram of the whole batch is the sum
    of the ranks' Grams: with losses that are means over the local batch B_r of a global batch
    of W·B_r, K = (1/W²) Σ_r K_r, one (T² + T)-value all-reduce with the losses. Every rank then
    solves the same problem, and the final backward of Σ_t c_t L_t is ordinary data parallelism:
    DistributedDataParallel's all-reduce when ``module`` is a DDP model (run the forward
    *outside* any ``no_sync``), else one all-reduce of every ``.grad`` by this strategy.

    Same arguments as :class:`~mtl_fast.strategies.MGDAUB`, plus ``group``, ``comm``,
    ``module`` and ``broadcast`` as :class:`DistributedGramStrategy`.
    """

    def no_sync(self) -> contextlib.AbstractContextManager[None]:
        """Nothing: MGDA-UB's single trunk backward is DDP's ordinary synchronised one."""
        return contextlib.nullcontext()

    def backward(
        self, losses: Sequence[torch.Tensor], /, *, features: torch.Tensor | None = None
    ) -> bool:
        """Write MGDA-UB's gradients, averaged over the ranks (see the class docstring)."""
        losses = check_losses(losses, self.num_tasks)
        features = self._check_features(features)
        self._check_trainable()
        lv = loss_vector(losses)
        G = self._feature_gradients(losses, features)
        self._lap("backward")
        T, W = self.num_tasks, self.comm.world
        buf = torch.cat([self._gram(G).double().reshape(-1) / W**2, lv.double() / W])
        buf = self.comm.all_reduce(buf.to(self.comm.device)).to(G.device)
        K = buf[: T * T].view(T, T).to(G.dtype)
        # The gradients are averaged before the finiteness check: every rank sees the same values.
        return self._feature_step(losses, buf[T * T :].to(lv.dtype), G, K)

    def _diagnose(self, J: torch.Tensor, K: torch.Tensor | None = None, space: str = "") -> Any:
        from mtl_fast.diagnostics import gradient_diagnostics

        assert K is not None
        return gradient_diagnostics(
            K, None, step=self.num_steps + 1, path_length=self.path_length, space="features"
        )


class DistributedLinearScalarization(_DataParallel, LinearScalarization):
    """Linear scalarisation over the ranks: the mean losses (one T-value all-reduce, so a
    NaN/Inf loss on any rank refuses the step on every rank), one backward pass, the gradients
    averaged (DDP's all-reduce with a DDP ``module``, else one of this strategy's). The
    diagnostics, which need the per-task gradients, are not taken. Same arguments as
    :class:`~mtl_fast.strategies.LinearScalarization`, plus those of
    :class:`DistributedMGDAUB`."""

    def no_sync(self) -> contextlib.AbstractContextManager[None]:
        """Nothing: the one backward pass is DDP's ordinary synchronised one."""
        return contextlib.nullcontext()

    def _loss_values(self, losses: Sequence[torch.Tensor]) -> torch.Tensor:
        """The mean over the ranks (a NaN/Inf loss on any rank refuses the step on all)."""
        return self._mean_losses(loss_vector(losses))

    def _diagnostics_due(self) -> bool:
        """Never: the diagnostics need the per-task gradients."""
        return False
