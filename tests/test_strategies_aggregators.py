"""The Gram-space aggregator strategies (PCGrad, IMTL-G, CAGrad, Nash-MTL, Aligned-MTL, ConFIG):
the gradients written are those of Σ_t c_t L_t with c the op's coefficients on the step's Gram,
their state resumes exactly, bad input is refused, and they train with a torch optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import mtl_fast
from mtl_fast import strategies
from tests import strategy_checks as checks
from tests.strategy_models import Tiny, batches, manual_jacobian, one_batch

F64 = torch.float64


# name → (strategy factory, expected coefficients from K)
CASES: dict[
    str, tuple[Callable[..., strategies.GramAggregator], Callable[[torch.Tensor], torch.Tensor]]
] = {
    "pcgrad": (
        lambda *a, **k: strategies.PCGrad(*a, seed=3, **k),
        lambda K: mtl_fast.pcgrad_weights(K, generator=torch.Generator().manual_seed(3)),
    ),
    "imtlg": (strategies.IMTLG, mtl_fast.imtlg_weights),
    "cagrad": (
        lambda *a, **k: strategies.CAGrad(*a, c=0.4, **k),
        lambda K: mtl_fast.cagrad_weights(K, c=0.4),
    ),
    "nashmtl": (strategies.NashMTL, mtl_fast.nash_mtl_weights),
    "alignedmtl": (
        lambda *a, **k: strategies.AlignedMTL(*a, scale_mode="median", **k),
        lambda K: mtl_fast.aligned_mtl_weights(K, scale_mode="median"),
    ),
    "config": (strategies.ConFIG, mtl_fast.config_weights),
}


@pytest.mark.parametrize("name", list(CASES))
def test_writes_the_gradients_of_the_weighted_losses(name: str) -> None:
    make, expected_c = CASES[name]
    T = 3
    model, _, _, losses = one_batch(T, F64)
    J = manual_jacobian(model, losses)
    c = expected_c(J @ J.T)
    expected = checks.weighted_sum_gradients(model, c, losses)
    strategy = make(model.trunk.parameters(), model.heads.parameters(), num_tasks=T)
    assert strategy.backward(losses)
    torch.testing.assert_close(strategy.last.weights, c, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(strategy.last.loss_scales, c, rtol=1e-9, atol=1e-12)
    checks.assert_gradients(model, expected, rtol=1e-8, atol=1e-12)


def _run(strategy: strategies.GramAggregator, model: Tiny, data: list[Any]) -> list[torch.Tensor]:
    out = []
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for x, y in data:
        opt.zero_grad(set_to_none=True)
        losses, _ = model.losses(x, y)
        strategy.backward(losses)
        opt.step()
        assert strategy.last.weights is not None
        out.append(strategy.last.weights.clone())
    return out


@pytest.mark.parametrize("name", ["pcgrad", "nashmtl"])
def test_state_resumes_exactly(name: str) -> None:
    """PCGrad's generator and Nash-MTL's α are in the state: a resumed run continues exactly."""
    make, _ = CASES[name]
    T = 4
    data = batches(T, 6)
    model = Tiny(T)
    full = _run(make(model.trunk.parameters(), model.heads.parameters(), num_tasks=T), model, data)
    model = Tiny(T)
    first = make(model.trunk.parameters(), model.heads.parameters(), num_tasks=T)
    head = _run(first, model, data[:3])
    state = first.state_dict()
    second = make(model.trunk.parameters(), model.heads.parameters(), num_tasks=T)
    second.load_state_dict(state)
    tail = _run(second, model, data[3:])
    for a, b in zip(full, head + tail):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_nash_mtl_update_weights_every_reuses_the_state() -> None:
    T = 3
    model = Tiny(T, dtype=F64)
    nash = strategies.NashMTL(
        model.trunk.parameters(), model.heads.parameters(), T, update_weights_every=2
    )
    data = batches(T, 3, dtype=F64)
    alphas = []
    for x, y in data:
        losses, _ = model.losses(x, y)
        nash.backward(losses)
        alphas.append(nash.alpha.clone())
    assert torch.equal(alphas[0], alphas[1]) and not torch.equal(alphas[1], alphas[2])
    with pytest.raises(ValueError, match="update_weights_every"):
        strategies.NashMTL(
            model.trunk.parameters(), model.heads.parameters(), T, update_weights_every=0
        )


def test_bad_hyperparameters_are_refused_at_construction() -> None:
    model = Tiny(2)
    shared, heads = list(model.trunk.parameters()), list(model.heads.parameters())
    with pytest.raises(ValueError, match="c must be"):
        strategies.CAGrad(shared, heads, 2, c=-1.0)
    with pytest.raises(ValueError, match="max_norm"):
        strategies.NashMTL(shared, heads, 2, max_norm=-1.0)
    with pytest.raises(ValueError, match="scale_mode"):
        strategies.AlignedMTL(shared, heads, 2, scale_mode="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"pref must have shape \(2,\)"):
        strategies.ConFIG(shared, heads, 2, pref=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="losses has 3 entries"):
        strategies.IMTLG(shared, heads, 2).backward([torch.ones(1, requires_grad=True)] * 3)


@pytest.mark.parametrize("name", list(CASES))
def test_nonfinite_gradient_is_refused_or_skipped(name: str) -> None:
    make, _ = CASES[name]
    T = 2
    model = Tiny(T)
    x, y = batches(T, 1)[0]
    x[0, 0] = float("nan")
    strategy = make(model.trunk.parameters(), model.heads.parameters(), num_tasks=T)
    losses, _ = model.losses(x, y)
    with pytest.raises(mtl_fast.NonFiniteError):
        strategy.backward(losses)
    skipping = make(
        model.trunk.parameters(), model.heads.parameters(), num_tasks=T, on_nonfinite="skip"
    )
    losses, _ = model.losses(x, y)
    assert not skipping.backward(losses)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", list(CASES))
def test_trains_and_takes_diagnostics(name: str) -> None:
    make, _ = CASES[name]
    T = 3
    model = Tiny(T)
    strategy = make(
        model.trunk.parameters(), model.heads.parameters(), num_tasks=T, diagnostics_every=2
    )
    data = batches(T, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(5):
        for x, y in data:
            opt.zero_grad(set_to_none=True)
            losses, _ = model.losses(x, y)
            assert strategy.backward(losses)
            opt.step()
            total = float(sum(loss.detach() for loss in losses))
            first = total if first is None else first
    assert total < first
    assert strategy.last.diagnostics is not None or strategy.num_steps % 2 == 1
