"""MultiAdam against T independent torch.optim.Adam instances; state round trip; refusals."""

from __future__ import annotations

import pytest
import torch

import mtl_fast
from mtl_fast._core.contracts import AdamHyper, AdamState

T = 4


def make_params(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.nn.Parameter(torch.randn(5, 3, generator=gen)),
        torch.nn.Parameter(torch.randn(7, generator=gen)),
        torch.nn.Parameter(torch.randn(1, generator=gen)),
    ]


def flat_grads(gen: torch.Generator, P: int) -> torch.Tensor:
    return torch.randn(T, P, generator=gen)


def split(flat: torch.Tensor, like: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    out, o = [], 0
    for p in like:
        out.append(flat[o : o + p.numel()].view_as(p).clone())
        o += p.numel()
    return out


def assert_same_as_torch(opt: mtl_fast.MultiAdam, params, theirs, adams) -> None:
    for p, q in zip(params, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=2e-6, atol=1e-7)
    for t, adam in enumerate(adams):
        m = (
            torch.cat([adam.state[q]["exp_avg"].reshape(-1) for q in theirs])
            if adam.state
            else None
        )
        if m is None:
            assert opt.steps[t] == 0
            assert torch.equal(opt.exp_avg[t], torch.zeros_like(opt.exp_avg[t]))
            continue
        v = torch.cat([adam.state[q]["exp_avg_sq"].reshape(-1) for q in theirs])
        # A few ulp: on the CPU the step runs through torch's fused kernel (fused multiply-adds).
        torch.testing.assert_close(opt.exp_avg[t], m, rtol=1e-6, atol=0)
        torch.testing.assert_close(opt.exp_avg_sq[t], v, rtol=1e-6, atol=0)
        assert opt.steps[t].item() == adam.state[theirs[0]]["step"].item()


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_single_task_steps_match_independent_adams(weight_decay: float) -> None:
    params, theirs = make_params(0), make_params(0)
    opt = mtl_fast.MultiAdam(params, num_tasks=T, lr=1e-2, weight_decay=weight_decay)
    adams = [torch.optim.AdamW(theirs, lr=1e-2, weight_decay=weight_decay) for _ in range(T)]
    gen = torch.Generator().manual_seed(1)
    sequence = [0, 1, 2, 3, 2, 2, 0, 3, 1, 0, 3, 3]  # uneven: every task has its own step count
    for t in sequence:
        G = flat_grads(gen, opt.flat.numel())
        assert opt.step(G, tasks=[t])
        for q, g in zip(theirs, split(G[t], theirs)):
            q.grad = g
        adams[t].step()
    assert_same_as_torch(opt, params, theirs, adams)


def test_all_tasks_step_sums_directions() -> None:
    """S = all, w = 1: p moves by the sum of every task's Adam direction, each task with its own
    moments — the same as stepping T Adam instances on the same parameter in turn."""
    params, theirs = make_params(2), make_params(2)
    opt = mtl_fast.MultiAdam(params, num_tasks=T, lr=1e-2)
    adams = [torch.optim.Adam(theirs, lr=1e-2) for _ in range(T)]
    gen = torch.Generator().manual_seed(3)
    for _ in range(10):
        G = flat_grads(gen, opt.flat.numel())
        opt.step(G)
        for t in range(T):
            for q, g in zip(theirs, split(G[t], theirs)):
                q.grad = g
            adams[t].step()
    assert_same_as_torch(opt, params, theirs, adams)


def test_subset_rows_and_weights() -> None:
    """(|S|, P) gradients with weights equal the (T, P) form with the same task ids."""
    a, b = make_params(4), make_params(4)
    opt_a = mtl_fast.MultiAdam(a, num_tasks=T, lr=1e-2)
    opt_b = mtl_fast.MultiAdam(b, num_tasks=T, lr=1e-2)
    gen = torch.Generator().manual_seed(5)
    for _ in range(7):
        G = flat_grads(gen, opt_a.flat.numel())
        opt_a.step(G, tasks=[3, 1], weights=[0.25, 2.0])
        opt_b.step(G[[3, 1]], tasks=[3, 1], weights=torch.tensor([0.25, 2.0]))
    assert torch.equal(opt_a.flat, opt_b.flat)
    assert torch.equal(opt_a.exp_avg, opt_b.exp_avg)
    assert opt_a.steps.tolist() == [0.0, 7.0, 0.0, 7.0]


def test_tasks_outside_subset_are_untouched() -> None:
    params = make_params(6)
    opt = mtl_fast.MultiAdam(params, num_tasks=T)
    gen = torch.Generator().manual_seed(7)
    opt.step(flat_grads(gen, opt.flat.numel()), tasks=[0, 2])
    assert opt.steps.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert not opt.exp_avg[1].any() and not opt.exp_avg_sq[3].any()


def test_state_dict_round_trip_resumes_exactly() -> None:
    gen = torch.Generator().manual_seed(8)
    grads = [flat_grads(gen, 23) for _ in range(8)]
    plan = [[0], [1, 2], None, [3], [0, 3], [2], None, [1]]
    straight = make_params(9)
    opt = mtl_fast.MultiAdam(straight, num_tasks=T, lr=3e-3, weight_decay=0.01)
    for G, tasks in zip(grads, plan):
        opt.step(G, tasks=tasks)
    resumed = make_params(9)
    first = mtl_fast.MultiAdam(resumed, num_tasks=T, lr=3e-3, weight_decay=0.01)
    for G, tasks in zip(grads[:4], plan[:4]):
        first.step(G, tasks=tasks)
    saved = first.state_dict()
    saved_params = [p.detach().clone() for p in resumed]
    fresh = make_params(99)
    with torch.no_grad():
        for p, s in zip(fresh, saved_params):
            p.copy_(s)
    second = mtl_fast.MultiAdam(fresh, num_tasks=T, lr=1.0)  # hyperparameters come from the dict
    second.load_state_dict(saved)
    for G, tasks in zip(grads[4:], plan[4:]):
        second.step(G, tasks=tasks)
    assert torch.equal(second.flat, opt.flat)
    for name in ("exp_avg", "exp_avg_sq", "steps"):
        assert torch.equal(getattr(second, name), getattr(opt, name)), name


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_raises_and_changes_nothing(bad: float) -> None:
    params = make_params(10)
    opt = mtl_fast.MultiAdam(params, num_tasks=T)
    gen = torch.Generator().manual_seed(11)
    opt.step(flat_grads(gen, opt.flat.numel()))
    before = (opt.flat.clone(), opt.exp_avg.clone(), opt.exp_avg_sq.clone(), opt.steps.clone())
    G = flat_grads(gen, opt.flat.numel())
    G[2, 5] = bad
    with pytest.raises(mtl_fast.NonFiniteError, match=r"task\(s\) \[2\]") as info:
        opt.step(G)
    assert info.value.tasks == [2]
    for x, y in zip((opt.flat, opt.exp_avg, opt.exp_avg_sq, opt.steps), before):
        assert torch.equal(x, y)
    # A step that does not include the bad task goes through.
    assert opt.step(G, tasks=[0, 1, 3])


def test_nonfinite_gradient_skip_mode_reports() -> None:
    params = make_params(12)
    opt = mtl_fast.MultiAdam(params, num_tasks=T, on_nonfinite="skip")
    G = torch.zeros(T, opt.flat.numel())
    G[0, 0] = float("nan")
    G[3, 1] = float("inf")
    before = opt.flat.clone()
    assert opt.step(G) is False
    assert opt.last_skipped == [0, 3]
    assert torch.equal(opt.flat, before) and opt.steps.sum() == 0


def test_works_with_lr_scheduler() -> None:
    params = make_params(13)
    opt = mtl_fast.MultiAdam(params, num_tasks=T, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(torch.zeros(T, opt.flat.numel()))
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5


def test_bad_arguments_name_themselves() -> None:
    params = make_params(14)
    opt = mtl_fast.MultiAdam(params, num_tasks=T)
    P = opt.flat.numel()
    with pytest.raises(ValueError, match="grads must have shape"):
        opt.step(torch.zeros(T, P + 1))
    with pytest.raises(ValueError, match="grads has 3 rows"):
        opt.step(torch.zeros(3, P), tasks=[0, 1])
    with pytest.raises(ValueError, match="tasks must be distinct"):
        opt.step(torch.zeros(T, P), tasks=[1, 1])
    with pytest.raises(ValueError, match=r"tasks must be ints in \[0, 4\)"):
        opt.step(torch.zeros(T, P), tasks=[4])
    with pytest.raises(ValueError, match="weights must have shape"):
        opt.step(torch.zeros(T, P), tasks=[0, 1], weights=[1.0])
    with pytest.raises(TypeError, match="grads must have dtype"):
        opt.step(torch.zeros(T, P, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_tasks"):
        mtl_fast.MultiAdam(make_params(0), num_tasks=0)
    with pytest.raises(ValueError, match="betas"):
        mtl_fast.MultiAdam(make_params(0), num_tasks=2, betas=(1.0, 0.9))
    with pytest.raises(TypeError, match=r"params\[1\] has dtype torch.float64"):
        mtl_fast.MultiAdam(
            [
                torch.nn.Parameter(torch.zeros(2)),
                torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)),
            ],
            num_tasks=2,
        )
    with pytest.raises(ValueError, match="state_dict is for num_tasks=4"):
        mtl_fast.MultiAdam(make_params(0), num_tasks=2).load_state_dict(opt.state_dict())


def test_parameters_become_views_of_the_flat_buffer() -> None:
    params = make_params(15)
    values = [p.detach().clone() for p in params]
    opt = mtl_fast.MultiAdam(params, num_tasks=2)
    for p, v in zip(params, values):
        assert torch.equal(p.detach(), v)
    with torch.no_grad():
        opt.flat.fill_(3.0)
    assert all((p == 3.0).all() for p in params)
    # Idempotent: a second optimizer over the same parameters shares the buffer.
    assert mtl_fast.flatten_parameters(params).data_ptr() == opt.flat.data_ptr()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_cpu_path_agrees_with_the_formula(dtype: torch.dtype) -> None:
    """The reference's CPU fast path (torch's fused Adam, lr·w_t per task) and its explicit
    formula compute the same step: parameters and every state tensor, 12 steps."""
    from mtl_fast.kernels.reference import adam as ref_adam

    gen = torch.Generator().manual_seed(16)
    P = 1001
    states = []
    for _ in range(2):
        g2 = torch.Generator().manual_seed(17)
        states.append(
            [
                torch.randn(P, generator=g2, dtype=dtype),
                torch.zeros(T, P, dtype=dtype),
                torch.zeros(T, P, dtype=dtype),
                torch.zeros(T),
            ]
        )
    plan = [[0], [1, 3], [0, 1, 2, 3], [2], [3, 0], [1], [0, 1, 2, 3], [2, 3], [1], [0], [3], [2]]
    for i, tasks in enumerate(plan):
        G = torch.randn(T, P, generator=gen, dtype=dtype)
        if i % 2:  # column-strided rows (torch's fused CPU kernel mishandles these as given)
            G = torch.randn(P, T, generator=gen, dtype=dtype).T
        idx = torch.tensor(tasks)
        w = torch.rand(len(tasks), generator=gen) * 2 - 0.5  # includes negative weights
        kw = dict(lr=3e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.02)
        fast, slow = states
        assert ref_adam._fused_cpu_applies(fast[0], G, fast[1], fast[2], 3e-3)
        ref_adam.multi_adam(AdamState(*fast), G, idx, idx, w.double(), AdamHyper(**kw))
        ref_adam.multi_adam(AdamState(*slow), G, idx, idx, w.double(), AdamHyper(**kw), fused=False)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-2)
