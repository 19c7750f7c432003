"""What ``train`` does differently on several ranks (under ``torchrun``): the distributed form
of the strategy, and each rank's share of every batch."""

from __future__ import annotations

import torch
import torch.distributed as dist

from mtl_fast.distributed import distribute
from mtl_fast.strategies import Strategy


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def distributed(strategy: Strategy) -> Strategy:
    """The strategy's exact data-parallel form on more than one rank, else itself."""
    return distribute(strategy) if world()[1] > 1 else strategy


def local_share(idx: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch of indices (W near-equal consecutive parts; empty
    when the batch has fewer than W examples)."""
    rank, size = world()
    return idx if size == 1 else idx.tensor_split(size)[rank]


def every_share_nonempty(n: int) -> bool:
    """Whether a global batch of n examples gives every rank at least one (all ranks agree)."""
    return n >= world()[1]
