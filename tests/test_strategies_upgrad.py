"""Combine-then-step strategies on the dual cone: UPGrad and DualProj."""

from __future__ import annotations

import pytest
import torch

import mtl_fast
from mtl_fast.strategies import DualProj, LinearScalarization, UPGrad
from tests import strategy_checks as checks
from tests.strategy_models import Tiny, batches, build, manual_jacobian, one_batch

STRATEGIES = {
    "upgrad": (UPGrad, mtl_fast.upgrad_weights),
    "dualproj": (DualProj, mtl_fast.dualproj_weights),
}


@pytest.mark.parametrize("name", STRATEGIES)
@pytest.mark.parametrize("with_pref", [False, True])
def test_weights_are_the_op_on_the_gram_and_grads_are_those_of_the_weighted_sum(
    name: str, with_pref: bool
) -> None:
    cls, weights_of = STRATEGIES[name]
    T = 3
    model, _, _, losses = one_batch(T, torch.float64)
    J = manual_jacobian(model, losses)
    pref = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64) if with_pref else None
    w_expected = weights_of(J @ J.T, pref=pref)
    expected = checks.weighted_sum_gradients(model, w_expected, losses)

    strategy = build(cls, model, pref=pref)
    assert strategy.backward(losses)
    torch.testing.assert_close(strategy.last.weights, w_expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(strategy.last.loss_scales, w_expected, rtol=1e-9, atol=1e-12)
    checks.assert_gradients(model, expected, rtol=1e-8, atol=1e-12)
    # The shared direction conflicts with no task (up to the ridge of the normalisation).
    d = torch.cat([p.grad.reshape(-1) for p in model.trunk.parameters()])
    K = J @ J.T
    assert (J @ d >= -2e-4 * K.trace() * w_expected.abs().max()).all()


def test_without_conflict_upgrad_and_dualproj_are_the_mean() -> None:
    """Tasks whose gradients agree: both weightings give 1/T, the mean-loss step."""
    T = 3
    gen = torch.Generator().manual_seed(0)
    shared = torch.nn.Parameter(torch.randn(6, generator=gen, dtype=torch.float64))
    targets = [torch.randn(6, generator=gen, dtype=torch.float64) * 0.1 - 5.0 for _ in range(T)]
    for cls in (UPGrad, DualProj):
        shared.grad = None
        losses = [(shared - t).pow(2).sum() for t in targets]  # all pull the same way
        strategy = cls([shared], num_tasks=T)
        assert strategy.backward(losses)
        torch.testing.assert_close(strategy.last.weights, torch.full((T,), 1 / T).double())
        mean = LinearScalarization([shared], num_tasks=T, weights=[1 / T] * T)
        got = shared.grad.clone()
        shared.grad = None
        mean.backward([(shared - t).pow(2).sum() for t in targets])
        torch.testing.assert_close(got, shared.grad)


@pytest.mark.parametrize("cls", [UPGrad, DualProj])
def test_nonfinite_loss_and_gradient_are_refused(cls: type) -> None:
    T = 2
    model, x, y = checks.refuses_a_nan_loss(cls)
    skip = checks.skips_an_infinite_gradient(cls, model, x)
    assert skip.last.skipped == [0] and skip.num_steps == 0
    # "ignore": no check and no exception; the weights of a non-finite Gram are NaN.
    losses, _ = model.losses(x, y)
    losses[0] = losses[0] * float("nan")
    ignore = cls(model.trunk.parameters(), num_tasks=T, on_nonfinite="ignore")
    assert ignore.backward(losses)
    assert torch.isnan(ignore.last.weights).all()


def test_errors_name_the_argument() -> None:
    model = Tiny(3)
    args = (list(model.trunk.parameters()), list(model.heads.parameters()))
    with pytest.raises(ValueError, match=r"pref must have shape \(3,\)"):
        UPGrad(*args, num_tasks=3, pref=torch.ones(2))
    with pytest.raises(TypeError, match="pref must have dtype"):
        UPGrad(*args, num_tasks=3, pref=torch.ones(3, dtype=torch.int64))
    with pytest.raises(mtl_fast.NonFiniteError, match="pref"):
        DualProj(*args, num_tasks=3, pref=torch.tensor([1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="reg_eps"):
        DualProj(*args, num_tasks=3, reg_eps=-1.0)
    with pytest.raises(ValueError, match="max_iter"):
        UPGrad(*args, num_tasks=3, max_iter=-2)


@pytest.mark.parametrize("cls", [UPGrad, DualProj])
def test_trains_with_a_torch_optimizer(cls: type) -> None:
    T = 3
    model = Tiny(T)
    strategy = cls(model.trunk.parameters(), model.heads.parameters(), num_tasks=T)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = batches(T, 1)[0]
    first = None
    for _ in range(30):
        opt.zero_grad()
        losses, _ = model.losses(*data)
        total = float(sum(loss.item() for loss in losses))
        first = total if first is None else first
        assert strategy.backward(losses)
        opt.step()
    assert total < first


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_backend_is_used_for_the_solve(backend: str) -> None:
    if not mtl_fast.backends()[backend].available:
        pytest.skip(f"backend {backend!r} unavailable")
    T = 3
    model = Tiny(T, dtype=torch.float64)
    (x, y) = batches(T, 1, dtype=torch.float64)[0]
    ref = UPGrad(model.trunk.parameters(), model.heads.parameters(), num_tasks=T)
    losses, _ = model.losses(x, y)
    ref.backward(losses)
    w = ref.last.weights
    model.zero_grad()
    strategy = UPGrad(
        model.trunk.parameters(), model.heads.parameters(), num_tasks=T, backend=backend
    )
    losses, _ = model.losses(x, y)
    assert strategy.backward(losses)  # "cpu" solves; the Gram and the combination use "auto"
    torch.testing.assert_close(strategy.last.weights, w, rtol=1e-9, atol=1e-12)


def test_shared_update_matches_torchjd_mtl_backward() -> None:
    """TorchJD's mtl_backward + jac_to_grad with its UPGrad (quadprog) and ours write the same
    shared gradient; TorchJD gives each head its unweighted ∇L_t (documented difference)."""
    pytest.importorskip("torchjd")
    from torchjd.aggregation import UPGrad as JDUPGrad
    from torchjd.autojac import jac_to_grad, mtl_backward

    T = 3
    model = Tiny(T, dtype=torch.float64)
    (x, y) = batches(T, 1, dtype=torch.float64)[0]
    losses, z = model.losses(x, y)
    mtl_backward(losses, features=z)
    shared = list(model.trunk.parameters())
    jac_to_grad(shared, JDUPGrad())
    theirs = [p.grad.clone() for p in shared]
    model.zero_grad(set_to_none=True)
    losses, _ = model.losses(x, y)
    ours = UPGrad(model.trunk.parameters(), model.heads.parameters(), num_tasks=T)
    assert ours.backward(losses)
    for p, g in zip(shared, theirs):
        torch.testing.assert_close(p.grad, g, rtol=1e-7, atol=1e-12)
