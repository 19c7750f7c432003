"""Checks the strategy tests share, on the tiny model of :mod:`tests.strategy_models`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch

import mtl_fast
from tests.strategy_models import Tiny, build, one_batch


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
