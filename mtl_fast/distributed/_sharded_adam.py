"""ZeRO-1 Adam for the shared parameters: each rank keeps the optimizer state of its shard."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from mtl_fast._core.adam_checks import check_hyper
from mtl_fast._core.flat import check_params, offsets
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast._core.validate import require_positive_int
from mtl_fast.distributed._comm import Communicator
from mtl_fast.distributed._layout import ShardLayout
from mtl_fast.ops.combine_adam import combine_adam
from mtl_fast.optim.multi_adam import MultiAdam


def flatten_padded(params: Sequence[torch.Tensor], layout: ShardLayout) -> torch.Tensor:
    """Make ``params`` views of the first P elements of one zero-padded (W·shard,) buffer (values
    and Parameter objects kept, as :func:`mtl_fast.flatten_parameters`); returns the buffer."""
    first = params[0]
    flat = torch.zeros(layout.padded, dtype=first.dtype, device=first.device)
    for p, off in zip(params, offsets(params)):
        flat[off : off + p.numel()].copy_(p.detach().reshape(-1))
        p.data = flat[off : off + p.numel()].view_as(p)
    return flat


class ShardedAdam:
    """Adam(W) over the shared parameters with the state sharded over the ranks (ZeRO stage 1).

    The parameters become views of one zero-padded flat buffer (:func:`flatten_padded`); rank r
    owns columns [r·shard, (r+1)·shard) and keeps only their Adam state. :meth:`step` takes
    the (T, shard) averaged per-task gradients of this rank's shard and the weights, updates the
    shard (``num_states=1``: one fused :func:`mtl_fast.combine_adam` pass, ordinary Adam on
    d = Σ_t w_t G_t; ``num_states=T``: :class:`~mtl_fast.MultiAdam`, one state per task, the
    weighted directions summed), then all-gathers the parameters so every rank holds them all.

    Memory per rank: 2·P/W state values instead of 2·P (2·T·P/W with ``num_states=T``).

    Args:
        params: the shared parameters (one floating dtype and device: fp32 or fp64).
        comm: the :class:`Communicator` of the ranks.
        num_states: 1 (Adam) or T (multi-state Adam).
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decoupled; 0 gives Adam).
        backend: backend of the fused step.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        comm: Communicator,
        *,
        num_states: int = 1,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        backend: str | None = None,
    ) -> None:
        self.params = check_params(params)
        require_positive_int("num_states", num_states, 1)
        # The Adam(W) rules of MultiAdam and combine_adam, checked before anything is allocated.
        check_hyper(lr, betas, eps, weight_decay, self.params[0].device)
        self.comm = comm
        self.layout = ShardLayout(offsets(self.params)[-1], comm.world)
        self.flat = flatten_padded(self.params, self.layout)
        s, r = self.layout.shard, comm.rank
        self.shard = self.flat[r * s : (r + 1) * s]  # a view: stepping it updates the model
        self.num_states = num_states
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.backend = backend
        self.multi: MultiAdam | None = None
        if num_states == 1:
            self.exp_avg = torch.zeros_like(self.shard)
            self.exp_avg_sq = torch.zeros_like(self.shard)
            self.steps = torch.zeros(1, dtype=torch.float32, device=self.shard.device)
        else:
            self.multi = MultiAdam(
                [self.shard],
                num_tasks=num_states,
                lr=lr,
                betas=betas,
                eps=eps,
                weight_decay=weight_decay,
                on_nonfinite="ignore",  # the strategy refused non-finite steps already
                backend=backend,
            )

    def step(self, G: torch.Tensor, weights: torch.Tensor) -> None:
        """Update this rank's shard from its (T, shard) gradients ``G`` and (T,) ``weights``,
        then all-gather the parameters."""
        if G.dim() != 2 or G.shape[1] != self.layout.shard:
            raise ValueError(f"G must have shape (T, {self.layout.shard}), got {tuple(G.shape)}")
        if self.multi is None:
            combine_adam(
                G,
                weights.to(accumulation_dtype(G.dtype)),
                self.shard,
                self.exp_avg,
                self.exp_avg_sq,
                self.steps,
                lr=self.lr,
                betas=self.betas,
                eps=self.eps,
                weight_decay=self.weight_decay,
                backend=self.backend,
            )
        else:
            self.multi.param_groups[0]["lr"] = self.lr
            self.multi.step(G, weights=weights)
        self.gather()

    def gather(self) -> None:
        """Every rank's shard to every rank: one all-gather of the (W·shard,) flat buffer."""
        self.comm.all_gather(self.flat, self.shard.clone())

    def state_dict(self) -> dict[str, Any]:
        """This rank's state (its shard only: save one file per rank, as ZeRO does)."""
        state: dict[str, Any] = {
            "numel": self.layout.numel,
            "world": self.layout.world,
            "rank": self.comm.rank,
            "lr": self.lr,
        }
        if self.multi is None:
            state.update(
                exp_avg=self.exp_avg.clone(),
                exp_avg_sq=self.exp_avg_sq.clone(),
                steps=self.steps.clone(),
            )
        else:
            state["multi"] = self.multi.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore this rank's :meth:`state_dict` (same P, world size and rank)."""
        mine = (self.layout.numel, self.layout.world, self.comm.rank)
        theirs = (state.get("numel"), state.get("world"), state.get("rank"))
        if mine != theirs:
            raise ValueError(f"state is for (P, world, rank) = {theirs}, this optimizer has {mine}")
        self.lr = state["lr"]
        if self.multi is None:
            self.exp_avg.copy_(state["exp_avg"])
            self.exp_avg_sq.copy_(state["exp_avg_sq"])
            self.steps.copy_(state["steps"])
        else:
            self.multi.load_state_dict(state["multi"])
