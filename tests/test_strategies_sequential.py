"""Sequential-update strategies: per-task updates and selective task-group updates."""

from __future__ import annotations

import copy

import pytest
import torch

import mtl_fast
from mtl_fast.strategies import (
    MGDA,
    PerTaskUpdates,
    SelectiveTaskGroupUpdates,
    affinity_groups,
    affinity_update,
)
from tests.strategy_models import Tiny, batches, build

T = 4


def closure_for(model: Tiny, x: torch.Tensor, y: torch.Tensor):
    return lambda: model.losses(x, y)[0]


def assert_same_as_reference(ours: Tiny, ref: Tiny, data, groups: list[list[int]], lr: float):
    """``ours``, trained, ends where :func:`run_reference` takes ``ref`` (a copy of its initial
    state) on the same data and groups."""
    run_reference(ref, data, groups, lr)
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def run_reference(model: Tiny, data, groups: list[list[int]], lr: float) -> None:
    """One torch.optim.Adam per group for the trunk (fresh state each), one Adam for the heads;
    stepped in sequence, a fresh forward before each step."""
    trunk_opts = [torch.optim.Adam(model.trunk.parameters(), lr=lr) for _ in groups]
    head_opt = torch.optim.Adam(model.heads.parameters(), lr=lr)
    for x, y in data:
        for opt, g in zip(trunk_opts, groups):
            model.zero_grad(set_to_none=True)
            losses, _ = model.losses(x, y)
            sum(losses[t] for t in g).backward()
            opt.step()
            head_opt.step()


@pytest.mark.parametrize("group_size", [1, 2, T])
def test_per_task_updates_match_separate_torch_adams(group_size):
    data = batches(T, 6)
    lr = 1e-2
    ours = Tiny(T)
    ref = copy.deepcopy(ours)
    pt = build(PerTaskUpdates, ours, group_size=group_size, lr=lr, seed=3)
    groups = [list(g) for g in pt.groups]
    assert sorted(t for g in groups for t in g) == list(range(T))
    assert all(len(g) == group_size for g in groups)
    for x, y in data:
        pt.step(closure_for(ours, x, y))
        assert pt.last.groups == groups  # drawn once
    assert_same_as_reference(ours, ref, data, groups, lr)
    # And the parameters did move: the comparison is not vacuous.
    assert not torch.allclose(ours.trunk[0].weight, Tiny(T).trunk[0].weight)


def test_redrawn_full_group_is_ordinary_adam_on_the_sum():
    data = batches(T, 5)
    ours = Tiny(T)
    ref = copy.deepcopy(ours)
    pt = build(PerTaskUpdates, ours, group_size=T, redraw=True, lr=1e-2)
    for x, y in data:
        pt.step(closure_for(ours, x, y))
    assert_same_as_reference(ours, ref, data, [list(range(T))], 1e-2)


def test_redraw_changes_the_partition_and_is_seeded():
    def draws(seed):
        model = Tiny(T)
        pt = build(PerTaskUpdates, model, group_size=2, redraw=True, seed=seed)
        out = []
        for x, y in batches(T, 6):
            pt.step(closure_for(model, x, y))
            out.append(pt.last.groups)
        return out

    a, b = draws(0), draws(0)
    assert a == b
    assert len({str(g) for g in a}) > 1
    assert draws(1) != a


def test_group_size_larger_than_tasks_is_one_group_and_bad_size_raises():
    model = Tiny(T)
    pt = build(PerTaskUpdates, model, group_size=9)
    assert len(pt.groups) == 1
    with pytest.raises(ValueError, match="group_size"):
        PerTaskUpdates(model.trunk.parameters(), num_tasks=T, group_size=0)


def test_nonfinite_group_step_is_refused_and_leaves_everything_untouched():
    model = Tiny(2)
    x, y = batches(2, 1)[0]
    pt = build(PerTaskUpdates, model, on_nonfinite="skip")

    def closure():
        losses, _z = model.losses(x, y)
        return [losses[0] * float("inf"), losses[1]]

    before = [p.detach().clone() for p in model.parameters()]
    pt.step(closure)
    assert pt.last.skipped == [0]
    steps = pt.optimizer.state_steps().tolist()
    assert steps == [0.0, 1.0]
    assert torch.equal(model.heads[0].weight, before[4])  # task 0's head did not move
    strict = build(PerTaskUpdates, model)
    snapshot = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(mtl_fast.NonFiniteError):
        strict.step(closure)
    for p, b in zip(model.parameters(), snapshot):
        assert torch.equal(p.detach(), b)


# -- selective task-group updates ------------------------------------------------------------


def test_affinity_update_hand_computed():
    A = torch.zeros(3, 3, dtype=torch.float64)
    r = torch.tensor([0.5, -0.2, 0.1], dtype=torch.float64)
    affinity_update(A, r, [0, 1], beta=0.1)
    # s=0: t=0 r0≥0 → 0.1·0.25; t=1 opposite signs → 0.1·(−max(0.5,−0.2)/2); t=2 ∉ g → 0.1·0.05
    # s=1: t=0 opposite → −0.025; t=1 r1 < 0 → not updated; t=2 → 0.005
    expected = torch.tensor(
        [[0.025, -0.025, 0.005], [-0.025, 0.0, 0.005], [0.0, 0.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(A, expected)
    # A second step decays what is there: (1−β)·A + β·a.
    affinity_update(A, torch.tensor([0.2, 0.4, -0.1], dtype=torch.float64), [2], beta=0.1)
    expected[2] = torch.tensor([0.02, 0.04, 0.0], dtype=torch.float64)  # r2 < 0: diagonal kept
    torch.testing.assert_close(A, expected)


def scalar_update(A, r, g, beta):
    """The rule of docs/math.md, written with scalars (an independent statement of it)."""
    k = len(g)
    for s in g:
        for t in range(len(r)):
            if t not in g:
                a = r[t] / k
            elif t == s:
                if r[s] < 0:
                    continue
                a = r[s] / k
            elif r[t] * r[s] >= 0:
                a = r[t] / k
            else:
                a = -max(r[t], r[s]) / k
            A[s][t] = (1 - beta) * A[s][t] + beta * a


@pytest.mark.parametrize("crediting", ["corrected", "reference"])
def test_affinity_follows_a_scripted_sequence_of_losses(crediting):
    """Losses come from a script (the parameters get zero gradients), so the affinity after
    one iteration can be computed by hand from the crediting rule."""
    n = 3
    trunk = torch.nn.Linear(2, 2).double()
    heads = torch.nn.ModuleList(torch.nn.Linear(2, 1).double() for _ in range(n))
    script = [
        [1.0, 2.0, 4.0],
        [0.8, 2.2, 3.0],
        [0.9, 1.0, 3.6],
        [0.5, 1.5, 2.0],
    ]
    calls = []

    def closure():
        values = script[len(calls)]
        calls.append(values)
        zero = sum(p.sum() for p in [*trunk.parameters(), *heads.parameters()]) * 0
        return [torch.tensor(v, dtype=torch.float64) + zero for v in values]

    beta = 0.5
    stgu = SelectiveTaskGroupUpdates(
        trunk.parameters(),
        heads.parameters(),
        num_tasks=n,
        beta=beta,
        warmup=10,
        crediting=crediting,
        seed=0,
    )
    stgu.step(closure)
    order = stgu.last.groups
    assert sorted(order) == [[0], [1], [2]]
    forwards = 4 if crediting == "corrected" else 3
    assert len(calls) == forwards
    ratios = [[1 - b / a for a, b in zip(script[j], script[j + 1])] for j in range(forwards - 1)]
    A = [[0.0] * n for _ in range(n)]
    for j, r in enumerate(ratios):
        credited = order[j] if crediting == "corrected" else order[j + 1]
        scalar_update(A, r, credited, beta)
    torch.testing.assert_close(stgu.last.affinity, torch.tensor(A, dtype=torch.float32))
    # By hand for one entry: the group credited with the first ratio r = (0.2, −0.1, 0.25)
    # gets A[s, s] = 0.5 · 0.2 when s = 0 (and keeps 0 if s = 1, whose r is negative).
    first = order[0][0] if crediting == "corrected" else order[1][0]
    expected_diag = {0: 0.1, 1: 0.0, 2: 0.125}[first]
    assert float(stgu.last.affinity[first, first]) == pytest.approx(expected_diag)


def test_regrouping_finds_blocks_and_survives_degenerate_affinities():
    A = torch.tensor(
        [
            [1.0, 0.9, -0.5, -0.6],
            [0.8, 1.0, -0.4, -0.5],
            [-0.5, -0.4, 1.0, 0.9],
            [-0.6, -0.5, 0.8, 1.0],
        ]
    )
    groups, ok = affinity_groups(A, [[0], [1], [2], [3]])
    assert ok and groups == [[0, 1], [2, 3]]
    # A zero diagonal: no division by zero, a valid partition comes back.
    Z = A.clone()
    Z.fill_diagonal_(0)
    groups, ok = affinity_groups(Z, [[0], [1], [2], [3]])
    assert sorted(t for g in groups for t in g) == [0, 1, 2, 3]
    # All equal (e.g. nothing learnt yet): keep the previous grouping.
    prev = [[0, 2], [1, 3]]
    assert affinity_groups(torch.zeros(4, 4), prev) == (prev, False)
    # Not finite: keep the previous grouping.
    assert affinity_groups(torch.full((4, 4), float("nan")), prev) == (prev, False)
    # Affinity propagation that does not converge: keep the previous grouping.
    noisy = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    assert affinity_groups(noisy, prev, max_iter=1) == (prev, False)


def test_stgu_regroups_after_warmup_and_keeps_groups_when_clustering_fails():
    model = Tiny(T)
    data = batches(T, 6)
    stgu = build(SelectiveTaskGroupUpdates, model, warmup=3, beta=0.5, ap_max_iter=1)
    for x, y in data:
        stgu.step(closure_for(model, x, y))
    assert stgu.regroup_failures == 3  # iterations 4..6, each failing to converge
    assert sorted(stgu.last.groups) == [[0], [1], [2], [3]]
    assert bool(torch.isfinite(stgu.affinity).all()) and float(stgu.affinity.abs().sum()) > 0


# -- exact resume ----------------------------------------------------------------------------


def _make(kind: str, model: Tiny):
    args = (model.trunk.parameters(), model.heads.parameters())
    if kind == "pertask":
        return PerTaskUpdates(
            *args, num_tasks=T, group_size=2, redraw=True, lr=1e-2, seed=5, diagnostics_every=2
        )
    if kind == "stgu":
        return SelectiveTaskGroupUpdates(*args, num_tasks=T, warmup=2, beta=0.3, lr=1e-2, seed=5)
    return MGDA(*args, num_tasks=T, normalization="loss+", diagnostics_every=2)


def _train(kind, model, strategy, data, opt=None):
    for x, y in data:
        if kind == "mgda":
            opt.zero_grad()
            strategy.backward(model.losses(x, y)[0])
            opt.step()
        else:
            strategy.step(closure_for(model, x, y))


@pytest.mark.parametrize("kind", ["pertask", "stgu", "mgda"])
def test_resume_from_state_dict_matches_uninterrupted_run(kind):
    data = batches(T, 8)
    full = Tiny(T)
    strat = _make(kind, full)
    opt = torch.optim.Adam(full.parameters(), lr=1e-2) if kind == "mgda" else None
    _train(kind, full, strat, data, opt)

    first = Tiny(T)
    s1 = _make(kind, first)
    opt1 = torch.optim.Adam(first.parameters(), lr=1e-2) if kind == "mgda" else None
    _train(kind, first, s1, data[:4], opt1)
    saved = copy.deepcopy(
        {
            "model": first.state_dict(),
            "strategy": s1.state_dict(),
            "opt": None if opt1 is None else opt1.state_dict(),
        }
    )

    resumed = Tiny(T, seed=123)  # different initial values: everything must come from the file
    s2 = _make(kind, resumed)
    resumed.load_state_dict(saved["model"])
    s2.load_state_dict(saved["strategy"])
    opt2 = None
    if kind == "mgda":
        opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-2)
        opt2.load_state_dict(saved["opt"])
    _train(kind, resumed, s2, data[4:], opt2)

    for p, q in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
    assert s2.num_steps == strat.num_steps == 8
    assert s2.last.groups == strat.last.groups
    if kind == "stgu":
        assert torch.equal(s2.affinity, strat.affinity)
    if strat.path_length is not None:
        assert s2.path_length == pytest.approx(strat.path_length, rel=0, abs=0)


@pytest.mark.parametrize("group_size, extra", [(1, 0), (2, 1)])
def test_diagnostics_cost_no_extra_forward_for_per_task_steps(group_size, extra):
    model = Tiny(T)
    x, y = batches(T, 1)[0]
    calls = []

    def closure():
        calls.append(1)
        return model.losses(x, y)[0]

    pt = build(PerTaskUpdates, model, group_size=group_size, diagnostics_every=1)
    pt.step(closure)
    assert len(calls) == T // group_size + extra
    d = pt.last.diagnostics
    assert d is not None and d.cosine.shape == (T, T) and d.sign_conflict is not None
    torch.testing.assert_close(d.cosine.diagonal(), torch.ones(T))


def test_stgu_skipped_step_changes_nothing_and_is_not_credited():
    model = Tiny(2)
    x, y = batches(2, 1)[0]

    def closure():
        losses, _ = model.losses(x, y)
        return [losses[0] * float("nan"), losses[1]]

    stgu = build(SelectiveTaskGroupUpdates, model, on_nonfinite="skip")
    before = [p.detach().clone() for p in model.heads[0].parameters()]
    stgu.step(closure)
    assert stgu.last.skipped == [0]
    assert stgu.optimizer.state_steps().tolist() == [0.0, 1.0]
    for p, b in zip(model.heads[0].parameters(), before):
        assert torch.equal(p.detach(), b)
    assert bool(torch.isfinite(stgu.affinity).all())
    assert float(stgu.affinity[0].abs().sum()) == 0.0  # the refused step was credited nothing


def test_loss_ratios_guard_zero_and_nonfinite():
    from mtl_fast.strategies import loss_ratios

    prev = torch.tensor([2.0, 0.0, float("nan"), 1.0, 4.0])
    cur = torch.tensor([1.0, 1.0, 1.0, float("inf"), 5.0])
    torch.testing.assert_close(loss_ratios(prev, cur), torch.tensor([0.5, 0.0, 0.0, 0.0, -0.25]))
