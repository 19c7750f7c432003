"""MultiAdam refuses bad input before anything moves: every refused call below leaves the
parameters, the optimizer's state dict and its hyperparameters bit for bit as they were.

Covers the step's weights, tasks and gradients; the hyperparameters at construction and between
steps; parameter groups; parameters moved or cast after construction; an arena over other
parameters; and a strict, atomic ``load_state_dict``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import mtl_fast
from mtl_fast import LayoutError, NonFiniteError
from tests.snapshots import assert_same, optimizer_state, take

T = 3
NAN, INF = float("nan"), float("inf")


def stepped(seed: int = 0, **kw: Any) -> tuple[mtl_fast.MultiAdam, list[nn.Parameter]]:
    """A MultiAdam over three parameters (P = 23) with two steps taken (non-zero state)."""
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(*s, generator=gen)) for s in [(5, 3), (7,), (1,)]]
    opt = mtl_fast.MultiAdam(params, num_tasks=T, lr=1e-2, **kw)
    for tasks in ([0, 2], None):
        opt.step(torch.randn(T, opt.flat.numel(), generator=gen), tasks=tasks)
    return opt, params


def refused(
    opt: mtl_fast.MultiAdam,
    params: list[nn.Parameter],
    call: Callable[[], Any],
    error: type[Exception],
    match: str,
) -> None:
    """``call`` raises ``error`` matching ``match`` and changes nothing."""
    before = optimizer_state(opt, params)
    with pytest.raises(error, match=match):
        call()
    assert_same(before, optimizer_state(opt, params))


def grads(opt: mtl_fast.MultiAdam, rows: int = T) -> torch.Tensor:
    return torch.randn(rows, opt.flat.numel(), generator=torch.Generator().manual_seed(9))


# ------------------------------------------------------------------------------ step weights


@pytest.mark.parametrize(
    "weights, error, match",
    [
        ([NAN, 1.0, 1.0], ValueError, r"weights must be finite; weights\[0\] is nan"),
        ([1.0, INF, 1.0], ValueError, r"weights\[1\] is inf"),
        (torch.tensor([1.0, NAN, 1.0]), ValueError, r"weights must be finite; entries \[1\]"),
        ([True, False, True], TypeError, r"weights\[0\] must be a real number, got bool"),
        (torch.tensor([True, True, False]), TypeError, "weights must have dtype"),
        (torch.tensor([1, 2, 3]), TypeError, "weights must have dtype"),
        (torch.ones(3, dtype=torch.complex64), TypeError, "weights must have dtype"),
        ([1.0, 1.0], ValueError, r"weights must have shape \(3,\)"),
        (torch.ones(1, 3), ValueError, r"weights must have shape \(3,\)"),
        (torch.ones(()), ValueError, r"weights must have shape \(3,\)"),
        (1.0, TypeError, "weights must be a sequence"),
        ("abc", TypeError, "weights must be a sequence"),
        ([1.0, "2", 1.0], TypeError, r"weights\[1\] must be a real number"),
    ],
)
def test_bad_weights_are_refused(weights, error, match) -> None:
    opt, params = stepped()
    refused(opt, params, lambda: opt.step(grads(opt), weights=weights), error, match)


def test_nan_weights_are_refused_in_skip_mode_too() -> None:
    """A NaN weight is an argument error, not a gradient to skip."""
    opt, params = stepped(on_nonfinite="skip")
    refused(opt, params, lambda: opt.step(grads(opt), weights=[1.0, NAN, 1.0]), ValueError, "nan")


def test_valid_weights_still_work() -> None:
    """Integers and NumPy-like real numbers in a list are numbers; negative weights are allowed."""
    opt, _ = stepped()
    before = opt.flat.clone()
    assert opt.step(grads(opt), weights=[1, -0.5, 2.0])
    assert not torch.equal(before, opt.flat)


# ------------------------------------------------------------------------ tasks and gradients


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tasks=[]), ValueError, "tasks is empty"),
        (dict(tasks=[0, 0]), ValueError, "tasks must be distinct"),
        (dict(tasks=[3]), ValueError, r"tasks must be ints in \[0, 3\)"),
        (dict(tasks=[True]), ValueError, r"tasks must be ints"),
        (dict(tasks=[0.0]), ValueError, r"tasks must be ints"),
        (dict(tasks=1), TypeError, "tasks must be a sequence of ints"),
        (dict(tasks=torch.tensor([0.0])), TypeError, "tasks must be a 1-D int32/int64 tensor"),
        (dict(tasks=torch.tensor([True])), TypeError, "tasks must be a 1-D int32/int64 tensor"),
        (dict(tasks=torch.tensor(1)), TypeError, "tasks must be a 1-D int32/int64 tensor"),
        (dict(tasks=torch.tensor([-1])), ValueError, r"tasks must be ints in \[0, 3\)"),
    ],
)
def test_bad_tasks_are_refused(kwargs, error, match) -> None:
    opt, params = stepped()
    refused(opt, params, lambda: opt.step(grads(opt), **kwargs), error, match)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda P: torch.zeros(T, P, dtype=torch.int64), TypeError, "grads must have dtype"),
        (lambda P: torch.zeros(T, P, dtype=torch.bool), TypeError, "grads must have dtype"),
        (lambda P: torch.zeros(T, P, dtype=torch.complex64), TypeError, "grads must have dtype"),
        (lambda P: torch.zeros(T, P + 1), ValueError, "grads must have shape"),
        (lambda P: torch.zeros(P), ValueError, "grads must have shape"),
        (lambda P: torch.zeros(2, T, P), ValueError, "grads must have shape"),
        (lambda P: torch.zeros(0, P), ValueError, "grads has 0 rows"),
        (lambda P: [[0.0] * P] * T, TypeError, "grads must be a tensor or TaskGradients"),
        (lambda P: torch.full((T, P), NAN), NonFiniteError, r"task\(s\) \[0, 1, 2\]"),
    ],
)
def test_bad_grads_are_refused(make, error, match) -> None:
    opt, params = stepped()
    refused(opt, params, lambda: opt.step(make(opt.flat.numel())), error, match)


# ----------------------------------------------------------------------------- hyperparameters


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(lr=INF), ValueError, "lr must be a finite number ≥ 0"),
        (dict(lr=NAN), ValueError, "lr must be a finite number ≥ 0"),
        (dict(lr=-1e-3), ValueError, "lr must be a finite number ≥ 0"),
        (dict(lr="0.1"), TypeError, "lr must be a real number"),
        (dict(lr=True), TypeError, "lr must be a real number"),
        (dict(lr=torch.tensor(NAN)), ValueError, r"lr must be a finite number ≥ 0, got tensor"),
        (dict(lr=torch.tensor(-0.1)), ValueError, r"lr must be a finite number ≥ 0, got tensor"),
        (dict(lr=torch.tensor([0.1])), ValueError, "lr must be a number or a 0-d tensor"),
        (dict(lr=torch.tensor(1)), TypeError, "lr must have dtype"),
        (dict(weight_decay=INF), ValueError, "weight_decay must be a finite number ≥ 0"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay must be a finite number ≥ 0"),
        (dict(eps=-1e-8), ValueError, "eps must be a finite number ≥ 0"),
        (dict(eps=NAN), ValueError, "eps must be a finite number ≥ 0"),
        (dict(betas=(0.9,)), ValueError, r"betas must be a pair \(beta1, beta2\), got 1"),
        (dict(betas=(0.9, 0.99, 0.999)), ValueError, "betas must be a pair"),
        (dict(betas=0.9), TypeError, "betas must be a pair"),
        (dict(betas=(1.0, 0.9)), ValueError, r"betas must each be in \[0, 1\), got betas\[0\]"),
        (dict(betas=(0.9, NAN)), ValueError, r"betas\[1\]"),
        (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
        (dict(on_nonfinite="warn"), ValueError, "on_nonfinite must be one of"),
        (dict(backend="gpu"), ValueError, "backend must be 'auto' or one of"),
    ],
)
def test_bad_hyperparameters_are_refused_at_construction(kwargs, error, match) -> None:
    p = nn.Parameter(torch.randn(4))
    before = p.detach().clone()
    with pytest.raises(error, match=match):
        mtl_fast.MultiAdam([p], num_tasks=2, **kwargs)
    assert torch.equal(p.detach(), before)


@pytest.mark.parametrize("num_tasks", [0, -1, 2.0, True, None])
def test_bad_num_tasks_is_refused(num_tasks) -> None:
    with pytest.raises(ValueError, match="num_tasks must be an int ≥ 1"):
        mtl_fast.MultiAdam([nn.Parameter(torch.zeros(2))], num_tasks=num_tasks)


@pytest.mark.parametrize(
    "params, error, match",
    [
        ([], ValueError, "params is empty"),
        ([nn.Parameter(torch.zeros(0))], ValueError, r"P = 0"),
        (nn.Parameter(torch.zeros(3, 2)), TypeError, "got a single tensor"),
        ([torch.zeros(2, dtype=torch.int64)], TypeError, "must be floating"),
        (3, TypeError, "params must be an iterable"),
    ],
)
def test_bad_params_are_refused(params, error, match) -> None:
    with pytest.raises(error, match=match):
        mtl_fast.MultiAdam(params, num_tasks=2)


@pytest.mark.parametrize(
    "key, value, error, match",
    [
        ("lr", NAN, ValueError, "lr must be a finite number"),
        ("lr", -1.0, ValueError, "lr must be a finite number"),
        ("betas", (0.9,), ValueError, "betas must be a pair"),
        ("eps", -1.0, ValueError, "eps must be"),
        ("weight_decay", INF, ValueError, "weight_decay must be"),
    ],
)
def test_hyperparameters_set_between_steps_are_checked(key, value, error, match) -> None:
    """A scheduler or the user may change the group: each step checks it again."""
    opt, params = stepped()
    opt.param_groups[0][key] = value
    refused(opt, params, lambda: opt.step(grads(opt)), error, match)


def test_a_tensor_lr_set_to_nan_is_refused_on_the_cpu() -> None:
    p = nn.Parameter(torch.randn(4))
    lr = torch.tensor(1e-2)
    opt = mtl_fast.MultiAdam([p], num_tasks=2, lr=lr)
    lr.fill_(NAN)
    refused(opt, [p], lambda: opt.step(torch.ones(2, 4)), ValueError, "lr must be a finite")


# ------------------------------------------------------------------------------ param groups


def test_add_param_group_is_refused() -> None:
    opt, params = stepped()
    extra = nn.Parameter(torch.zeros(2))
    refused(
        opt,
        params,
        lambda: opt.add_param_group({"params": [extra], "lr": 1.0}),
        ValueError,
        "MultiAdam has one parameter group",
    )
    assert len(opt.param_groups) == 1


def test_parameter_group_dicts_are_refused_at_construction() -> None:
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError, match="MultiAdam takes one parameter group"):
        mtl_fast.MultiAdam([{"params": [a]}, {"params": [b], "lr": 0.1}], num_tasks=2)


# ------------------------------------------------------------- moved, cast or foreign parameters


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.double(),
        lambda m: m.half(),
        lambda m: m.to(torch.bfloat16),
        lambda m: setattr(m.weight, "data", m.weight.data.clone()),
    ],
    ids=["double", "half", "to-bf16", "data-reassigned"],
)
def test_moved_or_cast_parameters_are_refused(change) -> None:
    """After the parameters leave the flat buffer a step would update a stale copy: refused,
    and neither the module nor the optimizer changes."""
    model = nn.Linear(4, 3)
    opt = mtl_fast.MultiAdam(model.parameters(), num_tasks=2, lr=0.1)
    P = opt.flat.numel()
    change(model)
    params = list(model.parameters())
    refused(opt, params, lambda: opt.step(torch.ones(2, P)), LayoutError, "no longer a view of the")


def test_a_model_moved_to_its_own_device_and_dtype_still_steps() -> None:
    model = nn.Linear(4, 3)
    opt = mtl_fast.MultiAdam(model.parameters(), num_tasks=2, lr=0.1)
    model.to(torch.float32).to("cpu")
    before = model.weight.detach().clone()
    assert opt.step(torch.ones(2, opt.flat.numel()))
    assert not torch.equal(before, model.weight.detach())


def test_an_arena_over_other_parameters_is_refused() -> None:
    """The same sizes in another order, or another module of the same size: the arena's rows
    would move the wrong parameters."""
    model, twin = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    extra = nn.Parameter(torch.randn(16))
    params = [model.weight, extra]
    opt = mtl_fast.MultiAdam(params, num_tasks=2, lr=0.1)
    for arena_params in ([extra, model.weight], [twin.weight, extra], [model.weight]):
        arena = mtl_fast.TaskGradients(arena_params, num_tasks=2)
        arena.J.normal_()
        refused(opt, params, lambda a=arena: opt.step(a), LayoutError, "TaskGradients arena")
    good = mtl_fast.TaskGradients(params, num_tasks=2)
    good.J.normal_()
    assert opt.step(good)


# ------------------------------------------------------------------------ load_state_dict


def corrupt(state: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    out = dict(state)
    if value is _DELETE:
        del out[key]
    else:
        out[key] = value
    return out


_DELETE = object()
P = 23


@pytest.mark.parametrize(
    "key, value, error, match",
    [
        ("steps", _DELETE, ValueError, r"missing \['steps'\]"),
        ("exp_avg", _DELETE, ValueError, r"missing \['exp_avg'\]"),
        ("param_group", _DELETE, ValueError, r"missing \['param_group'\]"),
        ("extra", 1, ValueError, r"unexpected \['extra'\]"),
        ("steps", torch.ones(1), ValueError, r"'steps'\] must have shape \(3,\)"),
        ("exp_avg", torch.zeros(P), ValueError, r"'exp_avg'\] must have shape \(3, 23\)"),
        ("exp_avg_sq", torch.zeros(1, P), ValueError, r"\(no broadcasting\)"),
        ("exp_avg", torch.zeros(T, P, dtype=torch.float64), TypeError, "must have dtype"),
        ("steps", torch.zeros(T, dtype=torch.int64), TypeError, "must have dtype"),
        ("exp_avg", [[0.0] * P] * T, TypeError, "must be a torch.Tensor"),
        ("exp_avg", torch.full((T, P), NAN), ValueError, "holds NaN or Inf"),
        ("exp_avg_sq", -torch.ones(T, P), ValueError, "negative values"),
        ("steps", torch.tensor([1.0, 0.5, 2.0]), ValueError, "whole numbers"),
        ("steps", torch.tensor([1.0, -1.0, 2.0]), ValueError, "whole numbers"),
        ("num_tasks", 2, ValueError, "num_tasks=2, this optimizer has 3"),
        ("num_params", 24, ValueError, "num_params=24, this optimizer has 23"),
        ("param_group", {"lr": 0.1}, ValueError, "param_group lacks"),
        ("param_group", None, TypeError, "param_group must be a dict"),
    ],
)
def test_load_state_dict_is_strict_and_atomic(key, value, error, match) -> None:
    """A saved state with one bad entry (the moments come first, so a loader that assigns as
    it goes would already have overwritten them) is refused whole."""
    source, _ = stepped(seed=1)
    saved = source.state_dict()
    saved["exp_avg"] = saved["exp_avg"] + 1  # differs from the target's, so a write would show
    opt, params = stepped(seed=2)
    refused(opt, params, lambda: opt.load_state_dict(corrupt(saved, key, value)), error, match)


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("lr", NAN, "lr must be"),
        ("lr", torch.tensor(-1.0), "lr must be"),
        ("betas", (0.9,), "betas must be a pair"),
        ("betas", (0.9, 1.0), "betas must each be"),
        ("eps", -1.0, "eps must be"),
        ("weight_decay", INF, "weight_decay must be"),
        ("params", [0], "must not hold 'params'"),
    ],
)
def test_load_state_dict_checks_the_hyperparameters(key, value, match) -> None:
    source, _ = stepped(seed=1)
    saved = source.state_dict()
    saved["param_group"] = {**saved["param_group"], key: value}
    opt, params = stepped(seed=2)
    refused(opt, params, lambda: opt.load_state_dict(saved), ValueError, match)


def test_load_state_dict_round_trip_keeps_a_scheduler_key_and_a_tensor_lr() -> None:
    lr = torch.tensor(0.5)
    p = nn.Parameter(torch.randn(4))
    opt = mtl_fast.MultiAdam([p], num_tasks=2, lr=lr)
    source, _ = stepped()
    saved = source.state_dict()
    saved["num_params"], saved["num_tasks"] = 4, 2
    saved["exp_avg"] = torch.ones(2, 4)
    saved["exp_avg_sq"] = torch.ones(2, 4)
    saved["steps"] = torch.tensor([3.0, 1.0])
    saved["param_group"] = {**saved["param_group"], "initial_lr": 0.01}
    opt.load_state_dict(saved)
    assert opt.param_groups[0]["lr"] is lr and math.isclose(float(lr), 1e-2, rel_tol=1e-6)
    assert opt.param_groups[0]["initial_lr"] == 0.01
    assert opt.steps.tolist() == [3.0, 1.0]
    assert_same(take(saved["exp_avg"]), opt.exp_avg)


def test_betas_changed_in_place_are_checked() -> None:
    """The step skips re-checking hyperparameter objects it has checked, but not a list that
    may have been changed in place."""
    opt, params = stepped()
    betas = [0.9, 0.999]
    opt.param_groups[0]["betas"] = betas
    opt.step(grads(opt))
    betas[0] = 1.0
    refused(opt, params, lambda: opt.step(grads(opt)), ValueError, r"betas\[0\]")
