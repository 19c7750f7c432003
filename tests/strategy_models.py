"""A tiny shared-trunk model and data for the strategy tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, T: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh())
        self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in range(T))
        self.to(dtype)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        z = self.trunk(x)
        # Different scales per task so the magnitudes differ, as in real MTL.
        out = [
            (10.0**t) * (h(z).squeeze(1) - y[:, t]).pow(2).mean() for t, h in enumerate(self.heads)
        ]
        return out, z


def batches(T: int, n: int, seed: int = 1, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(16, 5, generator=gen, dtype=dtype),
            torch.randn(16, T, generator=gen, dtype=dtype),
        )
        for _ in range(n)
    ]


def one_batch(
    T: int, dtype: torch.dtype = torch.float32
) -> tuple[Tiny, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """A fresh :class:`Tiny`, the first batch (x, y) of :func:`batches`, and its T losses."""
    model = Tiny(T, dtype=dtype)
    x, y = batches(T, 1, dtype=dtype)[0]
    return model, x, y, model.losses(x, y)[0]


def manual_jacobian(model: Tiny, losses: list[torch.Tensor]) -> torch.Tensor:
    """(T, P) the per-task gradients w.r.t. the trunk, one autograd call per task."""
    params = list(model.trunk.parameters())
    rows = []
    for loss in losses:
        gs = torch.autograd.grad(loss, params, retain_graph=True)
        rows.append(torch.cat([g.reshape(-1) for g in gs]))
    return torch.stack(rows)


def build(cls: Callable[..., Any], model: Tiny, **options: Any) -> Any:
    """``cls`` on the model: the trunk shared, the heads task-specific, one task per head."""
    return cls(
        model.trunk.parameters(), model.heads.parameters(), num_tasks=len(model.heads), **options
    )
