"""The wrapped model a distributed strategy may be given: DistributedDataParallel (the per-task
passes run under ``no_sync``), nothing (the strategy averages every gradient itself), or FSDP
(refused, with the reason)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

FSDP_REASON = (
    "module: FSDP is not supported. FSDP shards the parameters and reduce-scatters each "
    "gradient inside the backward pass, so the T per-task gradients of the shared parameters "
    "never exist whole on a rank, and its no_sync keeps full unsharded gradients (P per rank) "
    "that the arena would copy out T times. Use DistributedDataParallel (or no wrapper) with "
    "ShardedAdam, which shards the optimizer state (ZeRO-1); see docs/distributed.md"
)


def is_fsdp(module: object) -> bool:
    """Whether ``module`` is wrapped by FSDP (``FullyShardedDataParallel`` or ``fully_shard``)."""
    names = {c.__name__ for c in type(module).__mro__}
    return bool(names & {"FullyShardedDataParallel", "FSDPModule"})


def check_module(module: torch.nn.Module | None) -> DistributedDataParallel | None:
    """The DDP module, None for a bare module or None; raises for FSDP, naming ``module``."""
    if module is None:
        return None
    if is_fsdp(module):
        raise ValueError(FSDP_REASON)
    if isinstance(module, DistributedDataParallel):
        return module
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module or None, got {type(module).__name__}")
    return None


@contextlib.contextmanager
def no_sync(ddp: DistributedDataParallel | None) -> Iterator[None]:
    """DDP's ``no_sync`` (its gradient hooks stay idle for every backward pass run inside, the
    forward included), or nothing without DDP."""
    if ddp is None:
        yield
    else:
        with ddp.no_sync():
            yield
