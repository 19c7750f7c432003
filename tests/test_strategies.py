"""Combine-then-step strategies: linear scalarisation, MGDA and MGDA-UB."""

from __future__ import annotations

import functools

import pytest
import torch

import mtl_fast
from mtl_fast.strategies import MGDA, MGDAUB, LinearScalarization, normalizers, solve_weights
from tests import strategy_checks as checks
from tests.strategy_models import Tiny, batches, build, manual_jacobian, one_batch

NORMS = ("none", "l2", "loss", "loss+")


def grads_of(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params]


def expected_divisors(K: torch.Tensor, lv: torch.Tensor, normalization: str) -> torch.Tensor:
    norms = K.diagonal().sqrt()
    return {"none": torch.ones_like(norms), "l2": norms, "loss": lv, "loss+": lv * norms}[
        normalization
    ]


@pytest.mark.parametrize("normalization", NORMS)
@pytest.mark.parametrize("apply_to", ["raw", "normalized"])
def test_mgda_weights_are_min_norm_of_the_gram_and_grads_match(normalization, apply_to):
    T = 3
    model, _, _, losses = one_batch(T, torch.float64)
    J = manual_jacobian(model, losses)
    lv = torch.stack([loss.detach() for loss in losses])
    K = J @ J.T
    n = expected_divisors(K, lv, normalization)
    Jn = J / n[:, None]
    w_expected = mtl_fast.min_norm(Jn @ Jn.T)
    c_expected = w_expected if apply_to == "raw" else w_expected / n
    # What the written gradients must be: those of Σ_t c_t L_t.
    expected = checks.weighted_sum_gradients(model, c_expected, losses)

    mgda = build(MGDA, model, normalization=normalization, apply_to=apply_to)
    assert mgda.backward(losses)
    torch.testing.assert_close(mgda.last.weights, w_expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(mgda.last.loss_scales, c_expected, rtol=1e-6, atol=1e-8)
    assert float(mgda.last.weights.sum()) == pytest.approx(1.0)
    assert bool((mgda.last.weights >= 0).all())
    checks.assert_gradients(model, expected, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("normalization", NORMS)
def test_mgda_ub_equals_min_norm_on_feature_gradients(normalization):
    T = 3
    model = Tiny(T, dtype=torch.float64)
    (x, y) = batches(T, 1, dtype=torch.float64)[0]
    losses, z = model.losses(x, y)
    G = torch.stack(
        [torch.autograd.grad(loss, z, retain_graph=True)[0].reshape(-1) for loss in losses]
    )
    assert G.shape == (T, z.numel())  # the batch dimension is part of the Gram
    lv = torch.stack([loss.detach() for loss in losses])
    K = G @ G.T
    n = expected_divisors(K, lv, normalization)
    w_expected = mtl_fast.min_norm(K / (n[:, None] * n[None, :]))
    expected = checks.weighted_sum_gradients(model, w_expected, losses)

    ub = build(MGDAUB, model, normalization=normalization)
    assert ub.backward(losses, features=z)
    torch.testing.assert_close(ub.last.weights, w_expected, rtol=1e-6, atol=1e-8)
    checks.assert_gradients(model, expected, rtol=1e-6, atol=1e-10)


def test_normalizers_match_their_definitions_and_guard_zero():
    K = torch.tensor([[4.0, 1.0, 0.0], [1.0, 9.0, 0.0], [0.0, 0.0, 0.0]])
    lv = torch.tensor([2.0, 0.5, 3.0])
    torch.testing.assert_close(normalizers(K, lv, "none"), torch.ones(3))
    torch.testing.assert_close(normalizers(K, lv, "l2"), torch.tensor([2.0, 3.0, 1.0]))
    torch.testing.assert_close(normalizers(K, lv, "loss"), lv)
    torch.testing.assert_close(normalizers(K, lv, "loss+"), torch.tensor([4.0, 1.5, 1.0]))
    with pytest.raises(ValueError, match="normalization"):
        normalizers(K, lv, "l1")
    w, c = solve_weights(K, lv, normalization="l2", apply_to="normalized")
    assert bool(torch.isfinite(w).all()) and bool(torch.isfinite(c).all())
    torch.testing.assert_close(c, w / torch.tensor([2.0, 3.0, 1.0]))


def test_l2_normalisation_makes_mgda_invariant_to_loss_scale():
    K = torch.tensor([[4.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    lv = torch.ones(2, dtype=torch.float64)
    w1, _ = solve_weights(K, lv, normalization="l2", apply_to="raw")
    scale = torch.tensor([1e3, 1.0], dtype=torch.float64)
    w2, _ = solve_weights(
        K * scale[:, None] * scale[None, :], lv, normalization="l2", apply_to="raw"
    )
    torch.testing.assert_close(w1, w2)


@pytest.mark.parametrize("diagnostics_every", [0, 1])
def test_linear_scalarisation_writes_the_weighted_sum_gradient(diagnostics_every):
    T = 3
    model, _, _, losses = one_batch(T, torch.float64)
    weights = torch.tensor([0.5, 2.0, 1.0])
    expected = checks.weighted_sum_gradients(model, weights.tolist(), losses)
    ls = build(LinearScalarization, model, weights=weights, diagnostics_every=diagnostics_every)
    assert ls.backward(losses)
    checks.assert_gradients(model, expected, rtol=1e-6, atol=1e-10)
    assert (ls.last.diagnostics is not None) == (diagnostics_every == 1)


def test_mgda_diagnostics_come_from_the_gram_of_the_task_gradients():
    T = 3
    model, x, y, losses = one_batch(T, torch.float64)
    J = manual_jacobian(model, losses)
    mgda = build(MGDA, model, diagnostics_every=2)
    mgda.backward(losses)
    assert mgda.last.diagnostics is None  # step 1 is not a diagnostics step
    model.zero_grad()
    losses, _ = model.losses(x, y)
    mgda.backward(losses)
    d = mgda.last.diagnostics
    assert d is not None and d.step == 2
    unit = J / J.norm(dim=1, keepdim=True)
    torch.testing.assert_close(d.cosine, unit @ unit.T)
    opposite = ((J[:, None, :] * J[None, :, :]) < 0).double().mean(-1)
    torch.testing.assert_close(d.sign_conflict, opposite)
    assert d.path_length == 0.0  # no optimizer step between the two calls


def test_nonfinite_loss_is_refused_and_clears_grads():
    model, x, y = checks.refuses_a_nan_loss(MGDA)
    losses, _ = model.losses(x, y)
    losses[1] = losses[1] * float("nan")
    skip = build(MGDA, model, on_nonfinite="skip")
    assert skip.backward(losses) is False
    assert skip.last.skipped == [1] and skip.num_steps == 0


def test_nonfinite_gradient_with_finite_loss_is_refused():
    T = 2
    model = Tiny(T)
    (x, _y) = batches(T, 1)[0]
    assert checks.skips_an_infinite_gradient(MGDA, model, x).last.skipped == [0]


def test_a_batched_fill_blames_only_the_task_whose_gradient_is_not_finite():
    """vmap's one backward pass makes every row NaN when one task's is (0 · NaN): the step names
    the culprit from one pass per task, as the sequential fill does."""
    T = 2
    model = Tiny(T)
    (x, _y) = batches(T, 1)[0]
    skip = checks.skips_an_infinite_gradient(functools.partial(MGDA, batched=True), model, x)
    assert skip.last.skipped == [0]
    arena = skip._arena()
    assert arena.batched_fallback is None  # vmap ran: the first fill was batched
    assert arena.filled_batched is False  # then one pass per task


def test_errors_name_the_argument():
    model = Tiny(2)
    (x, y) = batches(2, 1)[0]
    losses, _z = model.losses(x, y)
    mgda = MGDA(model.trunk.parameters(), model.heads.parameters(), num_tasks=2)
    with pytest.raises(ValueError, match="losses has 1 entries"):
        mgda.backward(losses[:1])
    with pytest.raises(ValueError, match="normalization"):
        MGDA(model.trunk.parameters(), num_tasks=2, normalization="L2")
    with pytest.raises(ValueError, match="apply_to"):
        MGDA(model.trunk.parameters(), num_tasks=2, apply_to="both")
    with pytest.raises(TypeError, match="features"):
        MGDAUB(model.trunk.parameters(), num_tasks=2).backward(losses)
    with pytest.raises(ValueError, match="task_params"):
        MGDA(model.trunk.parameters(), model.trunk.parameters(), num_tasks=2)
    with pytest.raises(ValueError, match="weights"):
        LinearScalarization(model.trunk.parameters(), num_tasks=2, weights=[1.0])


def test_mgda_trains_with_a_torch_optimizer():
    T = 2
    model = Tiny(T)
    data = batches(T, 30)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mgda = MGDA(model.trunk.parameters(), model.heads.parameters(), num_tasks=T, normalization="l2")
    first = None
    for x, y in data * 3:
        opt.zero_grad()
        losses, _ = model.losses(x, y)
        mgda.backward(losses)
        opt.step()
        if first is None:
            first = mgda.last.losses.sum()
    assert float(mgda.last.losses.sum()) < float(first)


def test_ignore_mode_does_not_check():
    T = 2
    model, x, y, losses = one_batch(T)
    losses[0] = losses[0] * float("nan")
    mgda = build(MGDA, model, on_nonfinite="ignore")
    assert mgda.backward(losses)  # written as is: the caller opted out of the check
    # Diagnostics too: NaN values instead of an error.
    losses, _ = model.losses(x, y)
    losses[0] = losses[0] * float("nan")
    diag = build(MGDA, model, on_nonfinite="ignore", diagnostics_every=1)
    assert diag.backward(losses) and diag.last.diagnostics is not None
    with pytest.raises(ValueError, match="on_nonfinite"):
        MGDA(model.trunk.parameters(), num_tasks=T, on_nonfinite="warn")


@pytest.mark.parametrize("normalization", NORMS)
def test_mgda_with_a_task_that_does_not_reach_the_trunk_stays_finite(normalization):
    T = 3
    model, _, _, losses = one_batch(T)
    # Task 2 only trains a free parameter: its gradient w.r.t. the trunk is exactly zero.
    free = torch.nn.Parameter(torch.ones(1))
    losses[2] = (free - 3).pow(2).sum()
    mgda = MGDA(
        model.trunk.parameters(), [*model.heads.parameters(), free], num_tasks=T,
        normalization=normalization,
    )  # fmt: skip
    assert mgda.backward(losses)
    w = mgda.last.weights
    assert bool(torch.isfinite(w).all()) and float(w.sum()) == pytest.approx(1.0)
    # The zero gradient is the min-norm point: all the weight goes to it, the trunk gets 0.
    assert float(w[2]) == pytest.approx(1.0)
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.trunk.parameters())
    assert free.grad is not None and bool(torch.isfinite(free.grad).all())


def test_batched_mgda_equals_sequential_and_hyperparameters_are_checked_at_construction():
    T = 3
    grads = []
    for batched in (False, True):
        model, _, _, losses = one_batch(T)
        mgda = build(MGDA, model, batched=batched)
        assert mgda.backward(losses)
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model = Tiny(T)
    shared = list(model.trunk.parameters())
    for kwargs, match in (
        ({"max_iter": -1}, "max_iter"),
        ({"tol": -1.0}, "tol"),
        ({"batched": "yes"}, "batched"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"backend": "nope"}, "backend"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            MGDA(shared, num_tasks=T, **kwargs)


def test_refused_step_leaves_parameters_and_grads_untouched_and_reads_once():
    """A NaN loss with skip: nothing written; a finite step: the shared .grad are views of one
    reused buffer (the step's direction), heads get their weighted gradients."""
    T = 2
    model = Tiny(T)
    (x, y) = batches(T, 1)[0]
    mgda = build(MGDA, model, on_nonfinite="skip")
    losses, _ = model.losses(x, y)
    assert mgda.backward(losses)
    first = [p.grad.clone() for p in model.trunk.parameters()]
    for p in model.parameters():
        p.grad = None
    losses, _ = model.losses(x, y)
    assert mgda.backward(losses)  # same batch, same model: same direction, same buffer
    for a, p in zip(first, model.trunk.parameters()):
        torch.testing.assert_close(p.grad, a)
    for p in model.parameters():
        p.grad = None
    losses, _ = model.losses(x, y)
    losses[0] = losses[0] * float("inf")
    assert mgda.backward(losses) is False
    assert mgda.last.skipped == [0]
    assert all(p.grad is None for p in model.parameters())
