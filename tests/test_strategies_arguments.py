"""Every strategy judges its arguments at construction, with errors naming them; one rule for the
parameters it is given (frozen ones refused); a call refused for its arguments changes nothing."""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import torch

from mtl_fast.strategies import (
    MGDA,
    MGDAUB,
    DualProj,
    LinearScalarization,
    PerTaskUpdates,
    SelectiveTaskGroupUpdates,
    Strategy,
    UPGrad,
)
from tests.strategy_models import Tiny, batches

T = 3
COMBINE = {
    "ls": LinearScalarization,
    "mgda": MGDA,
    "mgda-ub": MGDAUB,
    "upgrad": UPGrad,
    "dualproj": DualProj,
}
SEQUENTIAL = {"pertask": PerTaskUpdates, "stgu": SelectiveTaskGroupUpdates}
ALL = {**COMBINE, **SEQUENTIAL}


def build(name: str, model: Tiny, **kwargs: Any) -> Strategy:
    if name == "stgu":
        kwargs.setdefault("warmup", 1)
    strategy: Strategy = ALL[name](
        model.trunk.parameters(), model.heads.parameters(), num_tasks=T, **kwargs
    )
    return strategy


# ---- the parameters: one rule for every strategy -----------------------------------------


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("which", ["shared", "task"])
def test_a_frozen_parameter_is_refused_by_name_and_shape(name: str, which: str) -> None:
    model = Tiny(T)
    shared, task = list(model.trunk.parameters()), list(model.heads.parameters())
    frozen = (shared if which == "shared" else task)[2]
    frozen.requires_grad_(False)
    before = frozen.data_ptr()
    with pytest.raises(ValueError) as info:
        ALL[name](shared, task, num_tasks=T)
    message = str(info.value)
    assert f"{which}_params[2]" in message and str(tuple(frozen.shape)) in message
    assert "requires_grad" in message  # and how to leave it out
    assert frozen.data_ptr() == before  # refused before anything was built on it


@pytest.mark.parametrize("name", ALL)
def test_parameter_lists_are_refused_clearly(name: str) -> None:
    model = Tiny(T)
    shared, task = list(model.trunk.parameters()), list(model.heads.parameters())
    cls = ALL[name]
    cases: list[tuple[Callable[[], object], type[Exception], str]] = [
        (lambda: cls([], task, num_tasks=T), ValueError, "shared_params is empty"),
        (lambda: cls(shared[0], task, num_tasks=T), TypeError, "shared_params must be an"),
        (lambda: cls(shared, 3, num_tasks=T), TypeError, "task_params must be an"),
        (lambda: cls([*shared, "w"], task, num_tasks=T), TypeError, r"shared_params\[4\]"),
        (lambda: cls(shared, [*task, None], num_tasks=T), TypeError, r"task_params\[6\]"),
        (lambda: cls([shared[0] * 2], task, num_tasks=T), ValueError, "not a leaf"),
        (lambda: cls(shared, [task[0], task[0]], num_tasks=T), ValueError, r"task_params\[1\]"),
        (lambda: cls(shared, [*task, shared[1]], num_tasks=T), ValueError, r"shared_params\[1\]"),
        (lambda: cls([shared[0], shared[0]], num_tasks=T), ValueError, "same tensor"),
    ]
    for make, error, match in cases:
        with pytest.raises(error, match=match):
            make()


# ---- hyperparameters: judged at construction, errors name them -----------------------------

COMMON: list[tuple[dict[str, Any], str]] = [
    ({"num_tasks": 0}, "num_tasks"),
    ({"num_tasks": True}, "num_tasks"),
    ({"num_tasks": 2.0}, "num_tasks"),
    ({"diagnostics_every": -1}, "diagnostics_every"),
    ({"diagnostics_every": 1.5}, "diagnostics_every"),
    ({"on_nonfinite": "warn"}, "on_nonfinite"),
    ({"on_nonfinite": None}, "on_nonfinite"),
]
OWN: dict[str, list[tuple[dict[str, Any], str]]] = {
    "ls": [({"weights": [1.0, 2.0]}, "weights"), ({"weights": "abc"}, "weights"),
           ({"weights": [1.0, float("nan"), 1.0]}, "weights")],
    "mgda": [({"normalization": "L2"}, "normalization"), ({"apply_to": 1}, "apply_to"),
             ({"tol": float("inf")}, "tol"), ({"max_iter": -1}, "max_iter"),
             ({"batched": 1}, "batched"), ({"chunk_size": 0}, "chunk_size"),
             ({"backend": "foo"}, "backend"), ({"backend": 3}, "backend")],
    "upgrad": [({"reg_eps": -1.0}, "reg_eps"), ({"backend": "foo"}, "backend"),
               ({"pref": torch.ones(2)}, "pref"), ({"batched": "yes"}, "batched")],
    "pertask": [({"group_size": 0}, "group_size"), ({"redraw": "no"}, "redraw"),
                ({"seed": -1}, "seed"), ({"seed": 1.0}, "seed"), ({"lr": -1.0}, "lr"),
                ({"lr": float("nan")}, "lr"), ({"lr": "fast"}, "lr"),
                ({"betas": (0.9,)}, "betas"), ({"betas": (0.9, 1.0)}, r"betas\[1\]"),
                ({"eps": -1e-8}, "eps"), ({"weight_decay": float("inf")}, "weight_decay"),
                ({"head_lr": -1.0}, "head_lr"), ({"backend": "foo"}, "backend"),
                ({"backend": "cpu"}, "multi_adam")],
    "stgu": [({"damping": 0.1}, "damping"), ({"damping": 1.0}, "damping"),
             ({"ap_max_iter": 0}, "ap_max_iter"), ({"beta": 0.0}, "beta"),
             ({"beta": "x"}, "beta"), ({"warmup": -1}, "warmup"),
             ({"crediting": "official"}, "crediting"), ({"seed": 2**32}, "seed"),
             ({"lr": -1.0}, "lr")],
}  # fmt: skip
OWN["mgda-ub"] = OWN["mgda"]
OWN["dualproj"] = OWN["upgrad"]


def _cases() -> list[tuple[str, dict[str, Any], str]]:
    return [(n, kw, m) for n in ALL for kw, m in [*COMMON, *OWN[n]]]


@pytest.mark.parametrize(("name", "kwargs", "match"), _cases())
def test_bad_hyperparameters_are_refused_at_construction(
    name: str, kwargs: dict[str, Any], match: str
) -> None:
    model = Tiny(T)
    pointers = [p.data_ptr() for p in model.parameters()]
    kwargs = {"num_tasks": T, **kwargs}
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        ALL[name](model.trunk.parameters(), model.heads.parameters(), **kwargs)
    # Nothing was built on the parameters (the sequential strategies flatten them).
    assert [p.data_ptr() for p in model.parameters()] == pointers


def test_stgu_damping_is_refused_at_construction_not_at_the_first_regrouping() -> None:
    """It used to be accepted and fail inside scikit-learn after the warm-up."""
    model = Tiny(T)
    with pytest.raises(ValueError, match=r"damping must be a finite number in \[0.5, 1\)"):
        build("stgu", model, damping=0.2)


# ---- a call refused for its arguments changes nothing --------------------------------------


def _snapshot(strategy: Strategy, model: Tiny) -> dict[str, Any]:
    return {
        "params": [(p.data_ptr(), p.detach().clone()) for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "state": copy.deepcopy(strategy.state_dict()),
        "last": copy.deepcopy(vars(strategy.last)),
        "groups": copy.deepcopy(getattr(strategy, "groups", None)),
    }


def _same(a: object, b: object) -> bool:
    """Bitwise equality of nested snapshots (tensors with torch.equal, NaN-safe)."""
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        if not a.is_floating_point():
            return torch.equal(a, b)
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b))
        )
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return type(a) is type(b) and _same(vars(a), vars(b))
    return a == b


def _bad_loss_lists(model: Tiny, x: torch.Tensor, y: torch.Tensor) -> list[object]:
    losses, _z = model.losses(x, y)
    with torch.no_grad():
        detached = model.losses(x, y)[0]
    return [
        losses[:2],  # too few
        [*losses, losses[0]],  # too many
        [losses[0], 1.0, losses[2]],  # not a tensor
        [losses[0], losses[1] * torch.ones(2), losses[2]],  # not a scalar
        [losses[0], detached[1], losses[2]],  # does not require grad
        torch.stack(losses),  # one tensor instead of a list
        None,
    ]


@pytest.mark.parametrize("name", COMBINE)
def test_refused_backward_changes_nothing(name: str) -> None:
    model = Tiny(T)
    strategy = build(name, model, diagnostics_every=1)
    (x, y), (x2, y2) = batches(T, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, z = model.losses(x, y)
    assert strategy.backward(losses, features=z)
    opt.step()  # a state worth keeping: a step taken, a path length, .grad written
    before = _snapshot(strategy, model)
    calls: list[Callable[[], object]] = [
        (lambda bad=bad: strategy.backward(bad, features=model.trunk(x2)))  # type: ignore[misc]
        for bad in _bad_loss_lists(model, x2, y2)
    ]
    if name == "mgda-ub":
        calls.append(lambda: strategy.backward(model.losses(x2, y2)[0]))  # no features
        calls.append(lambda: strategy.backward(model.losses(x2, y2)[0], features=x2))
    for call in calls:
        with pytest.raises((ValueError, TypeError)):
            call()
        assert _same(_snapshot(strategy, model), before)


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_refused_step_changes_nothing(name: str) -> None:
    model = Tiny(T)
    strategy = build(name, model, diagnostics_every=1, redraw=True, group_size=2) if (
        name == "pertask"
    ) else build(name, model, diagnostics_every=1)  # fmt: skip
    (x, y), (x2, y2) = batches(T, 2)
    strategy.step(lambda: model.losses(x, y)[0])
    strategy.step(lambda: model.losses(x, y)[0])  # STGU regroups from here on
    before = _snapshot(strategy, model)
    rng = copy.deepcopy(strategy.rng.getstate())  # type: ignore[attr-defined]
    closures: list[object] = [lambda bad=bad: bad for bad in _bad_loss_lists(model, x2, y2)]
    closures.append("not callable")
    for closure in closures:
        with pytest.raises((ValueError, TypeError)):
            strategy.step(closure)  # type: ignore[attr-defined]
        assert _same(_snapshot(strategy, model), before)
        assert strategy.rng.getstate() == rng  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", ALL)
def test_a_parameter_frozen_after_construction_refuses_the_step(name: str) -> None:
    model = Tiny(T)
    strategy = build(name, model)
    (x, y) = batches(T, 1)[0]
    frozen = list(model.trunk.parameters())[1]
    frozen.requires_grad_(False)
    before = _snapshot(strategy, model)
    with pytest.raises(ValueError, match=r"shared_params\[1\].*no longer requires grad"):
        if name in COMBINE:
            losses, z = model.losses(x, y)
            strategy.backward(losses, features=z)  # type: ignore[attr-defined]
        else:
            strategy.step(lambda: model.losses(x, y)[0])  # type: ignore[attr-defined]
    assert _same(_snapshot(strategy, model), before)


# ---- the keyword groups: declared once, spelled in every signature -------------------------


def _public_strategies() -> list[type[Strategy]]:
    import mtl_fast.distributed as distributed
    import mtl_fast.strategies as strategies

    found = []
    for module in (strategies, distributed):
        for name in module.__all__:
            obj = getattr(module, name)
            if isinstance(obj, type) and issubclass(obj, Strategy) and obj is not Strategy:
                found.append(obj)
    return found


# The defaults of every group's names (those of the base constructor that keeps them).
GROUP_DEFAULTS: dict[str, Any] = {
    "diagnostics_every": 0,
    "on_nonfinite": "raise",
    "backend": None,
    "batched": None,
    "chunk_size": None,
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "head_lr": None,
}


def _group(cls: type[Strategy]) -> tuple[type, dict[str, Any], dict[str, Any]]:
    """The keyword group ``cls`` takes, the defaults it spells differently, and the arguments
    it needs besides the parameters."""
    from mtl_fast.distributed import DistributedGramStrategy, fixed
    from mtl_fast.strategies import CombineStrategy, SequentialStrategy
    from mtl_fast.strategies import _options as groups

    if issubclass(cls, DistributedGramStrategy):
        return groups.BackendKwargs, {"batched": False}, {"weighting": fixed([1.0] * T)}
    if cls is SequentialStrategy:
        return groups.StrategyKwargs, {}, {"num_states": 1, "seed": 0}
    if issubclass(cls, SequentialStrategy):
        return groups.SequentialKwargs, {}, {}
    if cls is CombineStrategy or issubclass(cls, LinearScalarization):
        return groups.StrategyKwargs, {}, {}
    return groups.ArenaKwargs, {}, {}


@pytest.mark.parametrize("cls", _public_strategies(), ids=lambda cls: cls.__name__)
def test_every_signature_spells_its_keyword_group_and_a_misspelling_is_refused(
    cls: type[Strategy],
) -> None:
    from mtl_fast._core.options import spelled_names

    group, own_defaults, needed = _group(cls)
    params = inspect.signature(cls).parameters
    assert list(params)[:3] == ["shared_params", "task_params", "num_tasks"]
    for name in spelled_names(group):
        assert name in params, name
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params[name].default == own_defaults.get(name, GROUP_DEFAULTS[name]), name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    model = Tiny(T)
    before = [p.data_ptr() for p in model.parameters()]
    with pytest.raises(TypeError, match="diagnostics_evry"):
        cls(  # type: ignore[call-arg]
            model.trunk.parameters(),
            model.heads.parameters(),
            T,
            **needed,
            diagnostics_evry=1,
        )
    assert [p.data_ptr() for p in model.parameters()] == before  # nothing re-pointed
