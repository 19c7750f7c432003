"""multi_adam on every backend: the backend op against the reference's explicit formula (fp32,
fp64, and fp16/bf16 parameters with fp32 moments), and the MultiAdam optimizer built on it
against T independent torch.optim.Adam(W) instances, state round trips and refusals."""

from __future__ import annotations

import pytest
import torch

import mtl_fast
from mtl_fast._core.contracts import AdamHyper, AdamRows, AdamState
from mtl_fast._core.precision import ADAM_TOL, relative_error
from mtl_fast.kernels import reference as ref
from tests.backends import for_backends
from tests.helpers import BF16, FP16, FP32, FP64, adam_tolerance

T = 4
SCHEDULE = [[0], [2], [0, 1, 2, 3], [1], [3, 0], [2], [0, 1, 2, 3], [1, 3]]


def fresh_state(P: int, dtype: torch.dtype, gen: torch.Generator, device) -> tuple:
    """(ours on ``device``, theirs on the CPU): p of ``dtype``, moments in its accumulation
    dtype (fp32 for fp16/bf16, as MultiAdam keeps them), step counts fp32."""
    p = torch.randn(P, generator=gen).to(dtype)
    sdtype = FP64 if dtype == FP64 else FP32
    tensors = [p, torch.zeros(T, P, dtype=sdtype), torch.zeros(T, P, dtype=sdtype), torch.zeros(T)]
    ours = AdamState(*(x.clone().to(device) for x in tensors))
    theirs = AdamState(*(x.clone() for x in tensors))
    return ours, theirs


def step_both(backend, ours, theirs, G, tasks, w, lr, wd) -> None:
    """One step of the backend and one of the reference's explicit formula (the definition)."""
    idx = torch.tensor(tasks)
    kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=wd)
    ref.multi_adam(theirs, AdamRows(G, idx, idx, w.double()), AdamHyper(lr=lr, **kw), fused=False)
    lr_ours = backend.to(lr) if isinstance(lr, torch.Tensor) else lr
    d = backend.to
    hyper = AdamHyper(lr=lr_ours, **kw)
    backend.op("multi_adam")(ours, AdamRows(d(G), d(idx), d(idx), d(w.double())), hyper)


def assert_states_close(ours: AdamState, theirs: AdamState, p_tol: float, m_tol: float) -> None:
    for name in ("param", "exp_avg", "exp_avg_sq"):
        a, b = getattr(ours, name).cpu(), getattr(theirs, name)
        err = relative_error(a, b)
        assert err <= (p_tol if name == "param" else m_tol), (name, err)
    # Step counts exactly; tasks outside a step untouched.
    assert torch.equal(ours.step.cpu(), theirs.step)


@for_backends(
    "multi_adam",
    "dtype, P, lr_tensor, wd",
    [
        (d, P, lt, wd)
        for d in (FP32, FP64)
        for P in (1, 7, 1000, 65537)
        for lt in (False, True)
        for wd in (0.0, 0.01)
    ],
    emulator=[
        (d, P, lt, wd)
        for d in (FP32, FP64)
        for P in (1, 7, 1000)
        for lt in (False, True)
        for wd in (0.0, 0.01)
    ],
)
def test_multi_adam_matches_the_formula_every_state(backend, dtype, P, lr_tensor, wd):
    gen = torch.Generator().manual_seed(P)
    ours, theirs = fresh_state(P, dtype, gen, backend.device)
    for tasks in SCHEDULE:
        G = torch.randn(T, P, generator=gen, dtype=dtype)
        w = torch.rand(len(tasks), generator=gen) + 0.5
        lr = torch.tensor(3e-3) if lr_tensor else 3e-3
        step_both(backend, ours, theirs, G, tasks, w, lr, wd)
    tol = adam_tolerance(dtype)
    assert_states_close(ours, theirs, tol, tol)


@for_backends(
    "multi_adam",
    "dtype, P, wd",
    [(d, 5000, wd) for d in (BF16, FP16) for wd in (0.0, 0.01)],
    emulator=[(d, 2000, wd) for d in (BF16, FP16) for wd in (0.0, 0.01)],
)
def test_multi_adam_low_precision_params(backend, dtype, P, wd) -> None:
    """MultiAdam's layout for fp16/bf16 parameters: low-precision p and g, fp32 moments."""
    gen = torch.Generator().manual_seed(3)
    ours, theirs = fresh_state(P, dtype, gen, backend.device)
    for tasks in ([0, 1, 2], [1], [2, 0]):
        G = torch.randn(T, P, generator=gen).to(dtype)
        step_both(backend, ours, theirs, G, tasks, torch.ones(len(tasks)), 1e-2, wd)
    # p is rounded to the low-precision dtype after every step: two ulps; moments to ADAM_TOL.
    assert_states_close(ours, theirs, 2 * torch.finfo(dtype).eps, ADAM_TOL)


@for_backends("multi_adam")
def test_multi_adam_skips_tasks_outside_the_step(backend) -> None:
    Tn, P = 5, 100
    d = backend.to
    m, v = d(torch.randn(Tn, P)), d(torch.rand(Tn, P))
    steps = d(torch.arange(Tn, dtype=FP32))
    m0, v0, s0 = m.clone(), v.clone(), steps.clone()
    idx = d(torch.tensor([1, 3]))
    ones = d(torch.ones(2, dtype=FP64))
    hyper = AdamHyper(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    state = AdamState(d(torch.randn(P)), m, v, steps)
    backend.op("multi_adam")(state, AdamRows(d(torch.randn(Tn, P)), idx, idx, ones), hyper)
    for t in (0, 2, 4):
        assert torch.equal(m[t], m0[t]) and torch.equal(v[t], v0[t]) and steps[t] == s0[t]
    assert steps[1] == s0[1] + 1 and steps[3] == s0[3] + 1


# ------------------------------------------------------------------------ the MultiAdam class


def make_params(seed: int, device=None) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (7,), (1,)]
    return [torch.nn.Parameter(torch.randn(*s, generator=gen).to(device)) for s in shapes]


def flat_grads(gen: torch.Generator, P: int, device=None) -> torch.Tensor:
    return torch.randn(T, P, generator=gen).to(device)


def split(flat: torch.Tensor, like: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    out, o = [], 0
    for p in like:
        out.append(flat[o : o + p.numel()].view_as(p).clone())
        o += p.numel()
    return out


def against_torch(backend, seed: int, torch_adam: type = torch.optim.Adam, **hyper) -> tuple:
    """(opt, params, theirs, adams): MultiAdam (lr 1e-2, ``hyper``) on parameters drawn with
    ``seed``, and one ``torch_adam`` (the same settings) per task on a copy of them."""
    dev = backend.device
    params, theirs = make_params(seed, dev), make_params(seed, dev)
    opt = mtl_fast.MultiAdam(params, num_tasks=T, lr=1e-2, backend=backend.dispatch, **hyper)
    adams = [torch_adam(theirs, lr=1e-2, **hyper) for _ in range(T)]
    return opt, params, theirs, adams


def torch_step(adam: torch.optim.Optimizer, theirs, flat: torch.Tensor) -> None:
    """One step of a torch optimizer over ``theirs`` with the flat gradient ``flat``."""
    for q, g in zip(theirs, split(flat, theirs)):
        q.grad = g
    adam.step()


def assert_same_as_torch(backend, opt: mtl_fast.MultiAdam, params, theirs, adams) -> None:
    """Parameters to rtol 2e-6; each task's moments: elementwise to 1e-6 on the reference
    (torch's own order of operations), to ADAM_TOL / 10 of the largest entry on a kernel (an
    fp32 FMA order of its own: moments near zero differ by a few ulps of the largest)."""
    for p, q in zip(params, theirs):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=2e-6, atol=1e-7)
    for t, adam in enumerate(adams):
        if not adam.state:
            assert opt.steps[t] == 0
            assert torch.equal(opt.exp_avg[t], torch.zeros_like(opt.exp_avg[t]))
            continue
        m = torch.cat([adam.state[q]["exp_avg"].reshape(-1) for q in theirs])
        v = torch.cat([adam.state[q]["exp_avg_sq"].reshape(-1) for q in theirs])
        if backend.is_reference:
            # A few ulp: on the CPU torch's own step runs through its fused kernel (FMAs).
            torch.testing.assert_close(opt.exp_avg[t], m, rtol=1e-6, atol=0)
            torch.testing.assert_close(opt.exp_avg_sq[t], v, rtol=1e-6, atol=0)
        else:
            for ours, truth in ((opt.exp_avg[t], m), (opt.exp_avg_sq[t], v)):
                assert relative_error(ours.cpu(), truth.cpu()) <= adam_tolerance(FP32), t
        assert opt.steps[t].item() == adam.state[theirs[0]]["step"].item()


@for_backends("multi_adam", "wd", [0.0, 0.05])
def test_single_task_steps_match_independent_adams(backend, wd) -> None:
    opt, params, theirs, adams = against_torch(backend, 0, torch.optim.AdamW, weight_decay=wd)
    gen = torch.Generator().manual_seed(1)
    sequence = [0, 1, 2, 3, 2, 2, 0, 3, 1, 0, 3, 3]  # uneven: every task has its own step count
    for t in sequence:
        G = flat_grads(gen, opt.flat.numel(), backend.device)
        assert opt.step(G, tasks=[t])
        torch_step(adams[t], theirs, G[t])
    assert_same_as_torch(backend, opt, params, theirs, adams)


@for_backends("multi_adam")
def test_all_tasks_step_sums_directions(backend) -> None:
    """S = all, w = 1: p moves by the sum of every task's Adam direction, each task with its own
    moments — the same as stepping T Adam instances on the same parameter in turn."""
    opt, params, theirs, adams = against_torch(backend, 2)
    gen = torch.Generator().manual_seed(3)
    for _ in range(10):
        G = flat_grads(gen, opt.flat.numel(), backend.device)
        opt.step(G)
        for t in range(T):
            torch_step(adams[t], theirs, G[t])
    assert_same_as_torch(backend, opt, params, theirs, adams)


@for_backends("multi_adam")
def test_subset_rows_and_weights(backend) -> None:
    """(|S|, P) gradients with weights equal the (T, P) form with the same task ids."""
    dev = backend.device
    opt_a = mtl_fast.MultiAdam(make_params(4, dev), num_tasks=T, lr=1e-2, backend=backend.dispatch)
    opt_b = mtl_fast.MultiAdam(make_params(4, dev), num_tasks=T, lr=1e-2, backend=backend.dispatch)
    gen = torch.Generator().manual_seed(5)
    for _ in range(7):
        G = flat_grads(gen, opt_a.flat.numel(), dev)
        opt_a.step(G, tasks=[3, 1], weights=[0.25, 2.0])
        opt_b.step(G[[3, 1]], tasks=[3, 1], weights=torch.tensor([0.25, 2.0], device=dev))
    assert torch.equal(opt_a.flat, opt_b.flat)
    assert torch.equal(opt_a.exp_avg, opt_b.exp_avg)
    assert opt_a.steps.tolist() == [0.0, 7.0, 0.0, 7.0]


@for_backends("multi_adam")
def test_tasks_outside_subset_are_untouched(backend) -> None:
    dev = backend.device
    opt = mtl_fast.MultiAdam(make_params(6, dev), num_tasks=T, backend=backend.dispatch)
    gen = torch.Generator().manual_seed(7)
    opt.step(flat_grads(gen, opt.flat.numel(), dev), tasks=[0, 2])
    assert opt.steps.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert not opt.exp_avg[1].any() and not opt.exp_avg_sq[3].any()


@for_backends("multi_adam")
def test_state_dict_round_trip_resumes_exactly(backend) -> None:
    dev = backend.device
    gen = torch.Generator().manual_seed(8)
    grads = [flat_grads(gen, 23, dev) for _ in range(8)]
    plan = [[0], [1, 2], None, [3], [0, 3], [2], None, [1]]
    kw = dict(lr=3e-3, weight_decay=0.01, backend=backend.dispatch)
    opt = mtl_fast.MultiAdam(make_params(9, dev), num_tasks=T, **kw)
    for G, tasks in zip(grads, plan):
        opt.step(G, tasks=tasks)
    resumed = make_params(9, dev)
    first = mtl_fast.MultiAdam(resumed, num_tasks=T, **kw)
    for G, tasks in zip(grads[:4], plan[:4]):
        first.step(G, tasks=tasks)
    saved = first.state_dict()
    saved_params = [p.detach().clone() for p in resumed]
    fresh = make_params(99, dev)
    with torch.no_grad():
        for p, s in zip(fresh, saved_params):
            p.copy_(s)
    # The hyperparameters come from the dict.
    second = mtl_fast.MultiAdam(fresh, num_tasks=T, lr=1.0, backend=backend.dispatch)
    second.load_state_dict(saved)
    for G, tasks in zip(grads[4:], plan[4:]):
        second.step(G, tasks=tasks)
    assert torch.equal(second.flat, opt.flat)
    for name in ("exp_avg", "exp_avg_sq", "steps"):
        assert torch.equal(getattr(second, name), getattr(opt, name)), name


@for_backends("multi_adam", "bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_raises_and_changes_nothing(backend, bad) -> None:
    dev = backend.device
    opt = mtl_fast.MultiAdam(make_params(10, dev), num_tasks=T, backend=backend.dispatch)
    gen = torch.Generator().manual_seed(11)
    opt.step(flat_grads(gen, opt.flat.numel(), dev))
    before = (opt.flat.clone(), opt.exp_avg.clone(), opt.exp_avg_sq.clone(), opt.steps.clone())
    G = flat_grads(gen, opt.flat.numel(), dev)
    G[2, 5] = bad
    with pytest.raises(mtl_fast.NonFiniteError, match=r"task\(s\) \[2\]") as info:
        opt.step(G)
    assert info.value.tasks == [2]
    for x, y in zip((opt.flat, opt.exp_avg, opt.exp_avg_sq, opt.steps), before):
        assert torch.equal(x, y)
    # A step that does not include the bad task goes through.
    assert opt.step(G, tasks=[0, 1, 3])


@for_backends("multi_adam")
def test_nonfinite_gradient_skip_mode_reports(backend) -> None:
    dev = backend.device
    opt = mtl_fast.MultiAdam(
        make_params(12, dev), num_tasks=T, on_nonfinite="skip", backend=backend.dispatch
    )
    G = torch.zeros(T, opt.flat.numel(), device=dev)
    G[0, 0] = float("nan")
    G[3, 1] = float("inf")
    before = opt.flat.clone()
    assert opt.step(G) is False
    assert opt.last_skipped == [0, 3]
    assert torch.equal(opt.flat, before) and opt.steps.sum() == 0


ROWS_CASES = [
    (FP32, 0.0, 1e-2, (0.9, 0.999), "all"),
    (FP32, 0.05, 1e-2, (0.9, 0.999), "subset"),
    (FP32, 0.01, "tensor", (0.3, 0.99), "strided"),  # β1 < 0.5: lerp's second form
    (FP32, 0.01, 1e-2, (0.9, 0.999), "aliased"),
    (FP64, 0.01, 1e-2, (0.9, 0.999), "all"),
    (BF16, 0.01, 1e-2, (0.9, 0.999), "all"),
]


def run_multi_adam(backend, dtype, *, weight_decay, lr, betas, rows) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    P = 1037
    dev = backend.device
    p = torch.nn.Parameter(torch.randn(P, generator=gen).to(dtype).to(dev))
    opt = mtl_fast.MultiAdam(
        [p], num_tasks=3, lr=lr, betas=betas, weight_decay=weight_decay, backend=backend.dispatch
    )
    for tasks in [[0], [2], [0, 1, 2], [1], [0, 2], [2, 0], [1], [0, 1, 2]]:
        G = torch.randn(3, P, generator=gen).to(dtype)
        weights = (torch.rand(len(tasks), generator=gen) + 0.5).tolist()
        if rows == "subset":  # row i belongs to tasks[i]
            G = G[: len(tasks)]
        elif rows == "strided":  # a column stride
            G = torch.randn(P, 3, generator=gen).to(dtype).T
        elif rows == "aliased":  # one gradient for every stepped state (row stride 0)
            G = torch.randn(1, P, generator=gen).to(dtype).expand(len(tasks), P)
        opt.step(G.to(dev), tasks=tasks, weights=weights)
    return [p.detach().cpu(), opt.exp_avg.cpu(), opt.exp_avg_sq.cpu(), opt.steps.cpu()]


@for_backends(
    "multi_adam",
    "dtype, weight_decay, lr, betas, rows",
    ROWS_CASES,
    ids=lambda c: f"{str(c[0])[6:]}-{c[4]}-lr_{c[2]}-betas{c[3][0]}-wd{c[1]}",
)
def test_multi_adam_class_matches_the_reference(backend, dtype, weight_decay, lr, betas, rows):
    """MultiAdam on this backend and on the reference: gradient rows as given (T or |S| rows),
    strided, aliased (an expanded view); lr a tensor; fp32, fp64 and bf16 parameters."""
    kw = dict(weight_decay=weight_decay, betas=betas, rows=rows)
    if lr == "tensor":
        ours = run_multi_adam(backend, dtype, lr=backend.to(torch.tensor(1e-2)), **kw)
        theirs = run_multi_adam(REFERENCE_CPU, dtype, lr=torch.tensor(1e-2), **kw)
    else:
        ours = run_multi_adam(backend, dtype, lr=lr, **kw)
        theirs = run_multi_adam(REFERENCE_CPU, dtype, lr=lr, **kw)
    assert torch.equal(ours[3], theirs[3]), "step counts differ"
    # bf16 parameters: one ulp here (two in the backend-level test, which also rounds grads).
    tol = adam_tolerance(dtype) / 2 if dtype == BF16 else adam_tolerance(dtype)
    for name, a, b in zip(("param", "exp_avg", "exp_avg_sq"), ours, theirs):
        assert relative_error(a, b) <= tol, (name, relative_error(a, b))


class _ReferenceOnCpu:
    dispatch = "reference"
    device = torch.device("cpu")


REFERENCE_CPU = _ReferenceOnCpu()


# ------------------------------------------------------------- refusals (before dispatch)


def test_works_with_lr_scheduler() -> None:
    opt = mtl_fast.MultiAdam(make_params(13), num_tasks=T, lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(torch.zeros(T, opt.flat.numel()))
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5


def test_bad_arguments_name_themselves() -> None:
    opt = mtl_fast.MultiAdam(make_params(14), num_tasks=T)
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


def test_finite_rows_whose_sum_overflows_are_not_flagged() -> None:
    """The fast check sums rows first; a finite row whose sum overflows must be confirmed
    element by element, not reported."""
    from mtl_fast._core.validate import all_finite, nonfinite_rows

    big = torch.full((3, 4), 3e38)  # finite, but every row sums to inf in fp32
    big[1, 2] = float("nan")
    big[2, 0] = float("-inf")
    assert nonfinite_rows(big) == [1, 2]
    assert nonfinite_rows(big, [2, 0]) == [0]
    assert all_finite(big[0]) and not all_finite(big[1]) and not all_finite(big[2])
    p = torch.nn.Parameter(torch.zeros(4))
    opt = mtl_fast.MultiAdam([p], num_tasks=3, lr=1e-30)
    assert opt.step(big[[0]], tasks=[0])  # overflowing but finite: the step is taken
    with pytest.raises(mtl_fast.NonFiniteError, match=r"\[2\]"):
        opt.step(big, tasks=[0, 2])


# ------------------------------------------------------------------------ backend-specific


@pytest.mark.parametrize("dtype", [FP32, FP64])
def test_reference_fused_cpu_path_agrees_with_the_formula(dtype: torch.dtype) -> None:
    """reference only. Its CPU fast path (torch's fused Adam, lr·w_t per task) and its explicit
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
        rows = AdamRows(G, idx, idx, w.double())
        ref_adam.multi_adam(AdamState(*fast), rows, AdamHyper(**kw))
        ref_adam.multi_adam(AdamState(*slow), rows, AdamHyper(**kw), fused=False)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * 1e-2)
