"""A tiny shared-trunk model and data for the strategy tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch
from torch import nn

import mtl_fast


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


def weighted_sum_gradients(
    model: Tiny, coefficients: Iterable[Any], losses: list[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """The gradients of Σ_t c_t L_t w.r.t. every parameter of the model (the graph kept)."""
    total = sum(c * loss for c, loss in zip(coefficients, losses))
    return torch.autograd.grad(total, list(model.parameters()), retain_graph=True)


def assert_gradients(
    model: Tiny, expected: Iterable[torch.Tensor], rtol: float, atol: float
) -> None:
    """Every parameter's ``.grad`` is the expected one."""
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=rtol, atol=atol)


def refuses_a_nan_loss(cls: Callable[..., Any]) -> tuple[Tiny, torch.Tensor, torch.Tensor]:
    """Checks that ``cls`` on a two-task :class:`Tiny` refuses a NaN loss of task 1: it raises
    NonFiniteError naming the task and writes no ``.grad``. Returns the model and its batch."""
    model, x, y, losses = one_batch(2)
    losses[1] = losses[1] * float("nan")
    strategy = build(cls, model)
    with pytest.raises(mtl_fast.NonFiniteError) as info:
        strategy.backward(losses)
    assert info.value.tasks == [1]
    assert all(p.grad is None for p in model.parameters())
    return model, x, y


def skips_an_infinite_gradient(cls: Callable[..., Any], model: Tiny, x: torch.Tensor) -> Any:
    """Checks that ``cls`` with ``on_nonfinite="skip"`` refuses a finite loss whose gradient
    through the trunk is infinite (task 0): ``backward`` returns False and writes no ``.grad``
    (an optimizer step moves nothing). Returns the strategy."""
    z = model.trunk(x)
    # sqrt at 0: a finite loss with an infinite gradient through the trunk for task 0 only.
    losses = [(z * 0).abs().sqrt().sum(), model.heads[1](z).pow(2).mean()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    skip = build(cls, model, on_nonfinite="skip")
    assert skip.backward(losses) is False
    opt.step()
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)
    return skip
