"""TaskGradients: rows equal autograd.grad exactly, written in place; bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mtl_fast


def model(seed: int) -> tuple[nn.Module, nn.ModuleList]:
    torch.manual_seed(seed)
    trunk = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.Tanh()
    )
    heads = nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 3), nn.Linear(8, 2)])
    return trunk, heads


def losses_of(trunk: nn.Module, heads: nn.ModuleList, x: torch.Tensor) -> list[torch.Tensor]:
    z = trunk(x)
    return [h(z).pow(t + 1).mean() for t, h in enumerate(heads)]


def test_rows_equal_autograd_grad_exactly() -> None:
    trunk, heads = model(0)
    x = torch.randn(4, 2, 6, 6)
    shared = list(trunk.parameters())
    expected = [
        torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, shared, retain_graph=True)])
        for loss in losses_of(trunk, heads, x)
    ]
    arena = mtl_fast.TaskGradients(shared, num_tasks=3)
    arena.backward(losses_of(trunk, heads, x))
    for t in range(3):
        assert torch.equal(arena.J[t], expected[t]), f"row {t}"
    # Shared parameters' .grad are restored (None); heads accumulated their own gradients.
    assert all(p.grad is None for p in shared)
    assert all(p.grad is not None for p in heads.parameters())


def test_backward_writes_in_place_without_a_copy() -> None:
    trunk, heads = model(1)
    arena = mtl_fast.TaskGradients(list(trunk.parameters()), num_tasks=3)
    x = torch.randn(2, 2, 6, 6)
    loss = losses_of(trunk, heads, x)[1]
    with arena.task(1) as row:
        views = [p.grad for p in trunk.parameters()]
        loss.backward()
        # Autograd accumulated into the very tensors we installed: storage of the arena.
        assert all(p.grad is v for p, v in zip(trunk.parameters(), views))
        assert all(
            v.untyped_storage().data_ptr() == arena.J.untyped_storage().data_ptr() for v in views
        )
    assert row.abs().sum() > 0 and not arena.J[0].any() and not arena.J[2].any()


def test_rows_are_zeroed_between_steps_and_unused_parameters_stay_zero() -> None:
    a = nn.Parameter(torch.ones(3))
    b = nn.Parameter(torch.ones(2))
    arena = mtl_fast.TaskGradients([a, b], num_tasks=2)
    for _ in range(2):  # a second step must not accumulate on top of the first
        arena.backward([(a * 2).sum(), (b * 3).sum()])
    assert arena.J.tolist() == [[2, 2, 2, 0, 0], [0, 0, 0, 3, 3]]


def test_per_parameter_views_and_gram() -> None:
    trunk, heads = model(2)
    arena = mtl_fast.TaskGradients(list(trunk.parameters()), num_tasks=3)
    arena.backward(losses_of(trunk, heads, torch.randn(3, 2, 6, 6)))
    blocks = arena.per_parameter()
    assert [b.shape[1:] for b in blocks] == [p.shape for p in trunk.parameters()]
    torch.testing.assert_close(mtl_fast.gram(blocks), mtl_fast.gram(arena.J))


def test_assign_grad_and_user_optimizer() -> None:
    p = nn.Parameter(torch.zeros(2, 2))
    arena = mtl_fast.TaskGradients([p], num_tasks=2)
    arena.assign_grad(torch.arange(4.0))
    assert p.grad.tolist() == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match=r"d must have shape \(4,\)"):
        arena.assign_grad(torch.zeros(5))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="params is empty"):
        mtl_fast.TaskGradients([], num_tasks=2)
    with pytest.raises(TypeError, match=r"params\[1\] has dtype torch.float64"):
        mtl_fast.TaskGradients(
            [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2).double())], 2
        )
    with pytest.raises(ValueError, match=r"params\[1\] is on meta"):
        mtl_fast.TaskGradients(
            [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, device="meta"))], 2
        )
    with pytest.raises(ValueError, match="does not require grad"):
        mtl_fast.TaskGradients([torch.zeros(2)], 2)
    with pytest.raises(ValueError, match="num_tasks"):
        mtl_fast.TaskGradients([nn.Parameter(torch.zeros(2))], 0)
    arena = mtl_fast.TaskGradients([nn.Parameter(torch.zeros(2))], 2)
    with pytest.raises(ValueError, match=r"task must be an int in \[0, 2\)"):
        with arena.task(2):
            pass
    with pytest.raises(ValueError, match="losses has 1 entries"):
        arena.backward([torch.zeros(())])


@pytest.mark.parametrize("chunk_size", [None, 1, 2])
@pytest.mark.parametrize("accumulate_others", [True, False])
def test_batched_rows_equal_sequential_rows(
    chunk_size: int | None, accumulate_others: bool
) -> None:
    trunk, heads = model(3)
    x = torch.randn(4, 2, 6, 6)
    shared = list(trunk.parameters())
    seq = mtl_fast.TaskGradients(shared, num_tasks=3)
    seq.backward(losses_of(trunk, heads, x), accumulate_others=accumulate_others)
    head_grads = [None if p.grad is None else p.grad.clone() for p in heads.parameters()]
    heads.zero_grad(set_to_none=True)
    bat = mtl_fast.TaskGradients(shared, num_tasks=3)
    bat.J.fill_(7.0)  # every entry must be overwritten
    bat.backward(
        losses_of(trunk, heads, x),
        batched=True,
        chunk_size=chunk_size,
        accumulate_others=accumulate_others,
    )
    assert bat.batched_fallback is None
    torch.testing.assert_close(bat.J, seq.J, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in shared)
    for p, g in zip(heads.parameters(), head_grads):
        if accumulate_others:
            torch.testing.assert_close(p.grad, g)
        else:
            assert p.grad is None and g is None


class _ReadsInBackward(torch.autograd.Function):
    """A Function whose backward reads a value to the host: vmap cannot batch it."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @staticmethod
    def backward(ctx: object, g: torch.Tensor) -> torch.Tensor:
        return g * 2 if float(g.abs().max()) < 1e30 else g


def test_batched_falls_back_to_sequential_and_says_why() -> None:
    lin = nn.Linear(3, 4)
    x = torch.randn(5, 3)
    arena = mtl_fast.TaskGradients(list(lin.parameters()), num_tasks=2)

    def losses() -> list[torch.Tensor]:
        z = _ReadsInBackward.apply(lin(x))
        return [z.sum(), z.pow(2).sum()]

    with pytest.warns(RuntimeWarning, match="vmap cannot differentiate"):
        arena.backward(losses(), batched=True)
    assert arena.batched_fallback is not None and "item" in arena.batched_fallback
    expected = mtl_fast.TaskGradients(list(lin.parameters()), num_tasks=2)
    expected.backward(losses())
    torch.testing.assert_close(arena.J, expected.J)
    arena.backward(losses(), batched=True)  # later calls go sequential at once, no warning


def test_chunk_size_is_checked() -> None:
    p = nn.Parameter(torch.zeros(2))
    arena = mtl_fast.TaskGradients([p], 2)
    with pytest.raises(ValueError, match="chunk_size"):
        arena.backward([p.sum(), p.sum()], batched=True, chunk_size=0)


# ------------------------------------------------------- refusals leave the arena untouched


def _filled_arena() -> tuple[nn.Linear, mtl_fast.TaskGradients, torch.Tensor]:
    torch.manual_seed(0)
    trunk = nn.Linear(3, 2)
    arena = mtl_fast.TaskGradients(trunk.parameters(), num_tasks=2)
    arena.J.normal_()
    x = torch.randn(4, 3)
    return trunk, arena, x


@pytest.mark.parametrize(
    "losses, error, match",
    [
        (lambda out: [out.sum(), out.sum().detach()], ValueError, r"losses\[1\] does not require"),
        (lambda out: [out.sum(), torch.zeros(())], ValueError, r"losses\[1\] does not require"),
        (lambda out: [out.sum(), out], ValueError, r"losses\[1\] must be a scalar"),
        (lambda out: [out.sum()], ValueError, "losses has 1 entries"),
        (lambda out: out.sum(1)[:2], TypeError, "losses must be a sequence"),
        (lambda out: [out.sum(), out.sum().to(torch.complex64)], TypeError, "must have dtype"),
    ],
)
@pytest.mark.parametrize("batched", [False, True])
def test_bad_losses_leave_the_arena_untouched(losses, error, match, batched) -> None:
    """The first loss is fine: a backward that wrote row by row would already have changed row
    0 when the second is refused."""
    trunk, arena, x = _filled_arena()
    before = arena.J.clone()
    grads = [p.grad for p in trunk.parameters()]
    with pytest.raises(error, match=match):
        arena.backward(losses(trunk(x)), batched=batched)
    assert torch.equal(arena.J, before)
    assert all(p.grad is g for p, g in zip(trunk.parameters(), grads))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batched="yes"), "batched must be True, False or None"),
        (dict(retain_graph=1), "retain_graph must be True or False"),
        (dict(accumulate_others=None), "accumulate_others must be True or False"),
        (dict(chunk_size=1.5), "chunk_size must be an int"),
    ],
)
def test_bad_switches_are_refused(kwargs, match) -> None:
    trunk, arena, x = _filled_arena()
    before = arena.J.clone()
    out = trunk(x)
    with pytest.raises((TypeError, ValueError), match=match):
        arena.backward([out.sum(), out.pow(2).sum()], **kwargs)
    assert torch.equal(arena.J, before)


def test_cast_parameters_are_refused_before_a_row_is_zeroed() -> None:
    trunk, arena, x = _filled_arena()
    before = arena.J.clone()
    trunk.double()
    with pytest.raises(mtl_fast.LayoutError, match="cast or moved"):
        with arena.task(0):
            pass
    with pytest.raises(mtl_fast.LayoutError, match="cast or moved"):
        out = trunk(x.double())
        arena.backward([out.sum(), out.sum()])
    assert torch.equal(arena.J, before)


@pytest.mark.parametrize(
    "d, error, match",
    [
        (torch.ones(8, dtype=torch.int64), TypeError, "d must have dtype"),
        (torch.ones(7), ValueError, r"d must have shape \(8,\)"),
        ([1.0] * 8, TypeError, "d must be a torch.Tensor"),
    ],
)
def test_assign_grad_checks_d(d, error, match) -> None:
    trunk, arena, _ = _filled_arena()
    with pytest.raises(error, match=match):
        arena.assign_grad(d)
    assert all(p.grad is None for p in trunk.parameters())


def test_row_views_checks_the_task() -> None:
    _, arena, _ = _filled_arena()
    with pytest.raises(ValueError, match=r"task must be an int in \[0, 2\)"):
        arena.row_views(2)
