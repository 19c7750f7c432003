"""Averaging ``.grad`` over the ranks in one all-reduce per dtype (the heads, DDP's job done by
hand), and making every rank start from rank 0's parameters."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mtl_fast.distributed._comm import Communicator


def _by_dtype(params: Sequence[torch.Tensor]) -> dict[torch.dtype, list[torch.Tensor]]:
    out: dict[torch.dtype, list[torch.Tensor]] = {}
    for p in params:
        out.setdefault(p.dtype, []).append(p)
    return out


def all_reduce_grads(comm: Communicator, params: Sequence[torch.Tensor]) -> None:
    """Every ``p.grad`` ← its mean over the ranks, packed in one (N,) all-reduce per dtype.

    A ``.grad`` that is None counts as zeros and stays None when it is None on this rank (the
    ranks run the same graph, so a parameter without gradient has none on every rank)."""
    for group in _by_dtype(params).values():
        sizes = [p.numel() for p in group]
        dev = group[0].device
        flat = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dev)
                for p in group
            ]
        )
        comm.all_reduce(flat, average=True)
        for p, v in zip(group, flat.split(sizes)):
            if p.grad is not None:
                p.grad.copy_(v.view_as(p.grad))


def broadcast_parameters(comm: Communicator, params: Sequence[torch.Tensor], src: int = 0) -> None:
    """Copy rank ``src``'s values of ``params`` to every rank (one broadcast per dtype), as
    DistributedDataParallel does at construction."""
    for group in _by_dtype(params).values():
        sizes = [p.numel() for p in group]
        flat = torch.cat([p.detach().reshape(-1) for p in group])
        comm.broadcast(flat, src)
        with torch.no_grad():
            for p, v in zip(group, flat.split(sizes)):
                p.copy_(v.view_as(p))


def parameters_agree(comm: Communicator, params: Sequence[torch.Tensor]) -> bool:
    """Whether every rank holds bit-identical ``params`` (a max all-reduce of the values and of
    their negatives: equal everywhere exactly when max = min)."""
    flat = torch.cat([p.detach().reshape(-1).double().cpu() for p in params]).to(comm.device)
    both = comm.all_reduce_max(torch.cat([flat, -flat]))
    n = flat.numel()
    return bool(torch.equal(both[:n], -both[n:]))
