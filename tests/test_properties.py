"""Property-based checks (hypothesis) of every public entry point on bad and degenerate input.

The one property: a call either refuses its input with a clear error (``ValueError`` or
``TypeError``, which :class:`~mtl_fast.NonFiniteError` and :class:`~mtl_fast.LayoutError`
subclass) and leaves every tensor it could write bit for bit as it was, or returns a valid
result (finite where the input is, min-norm weights on the simplex, dual-cone weights ≥ U, ...).

Inputs: every dtype (floating, integer, bool, complex), shapes with T = 0, T = 1 and P = 0,
NaN/Inf, huge and tiny scales, non-contiguous views. The examples are derandomized (the same on
every run) and the budgets small, so the suite is deterministic and takes well under a minute
on two CPU cores. The ops run on each backend that works here: the reference and the compiled
CPU library; Triton (its interpreter on the CPU) gets a few tiny examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mtl_fast
from mtl_fast.diagnostics import cosine_similarity, magnitude_similarity, sign_conflict
from tests.backends import backend_infos
from tests.snapshots import assert_same, optimizer_state, take

CLEAR = (ValueError, TypeError)
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
OTHERS = [torch.int32, torch.int64, torch.bool, torch.complex64]
NAN, INF = float("nan"), float("inf")


def checked(max_examples: int) -> Callable[[Any], Any]:
    """Deterministic settings: derandomized, no deadline, no example database."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def runnable(op: str, names: tuple[str, ...] = ("reference", "cpu")) -> list[str]:
    """The backends among ``names`` that implement ``op`` and run here."""
    infos = backend_infos()
    return [n for n in names if op in infos[n].ops and infos[n].reason is None]


# ------------------------------------------------------------------------------ generators

SCALES = [1.0, 1e-30, 1e30, 6e4, 1e-8, 0.0]


@st.composite
def matrices(
    draw: st.DrawFn,
    rows: st.SearchStrategy[int],
    cols: st.SearchStrategy[int],
    dtypes: list[torch.dtype] = FLOATS,
    bad_values: bool = True,
) -> torch.Tensor:
    """A (rows, cols) tensor: random normal values times a scale (huge, tiny, zero), maybe a
    few NaN/Inf, of a drawn dtype, maybe as a non-contiguous (transposed) view."""
    R, C = draw(rows), draw(cols)
    seed = draw(st.integers(0, 2**16))
    x = torch.randn(R, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x * draw(st.sampled_from(SCALES))
    if bad_values and R * C > 0 and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 2))):
            i, j = draw(st.integers(0, R - 1)), draw(st.integers(0, C - 1))
            x[i, j] = draw(st.sampled_from([NAN, INF, -INF]))
    dtype = draw(st.sampled_from(dtypes))
    out = x.to(dtype) if dtype != torch.bool else x > 0
    if draw(st.booleans()):  # the same values in a column-major layout
        out = out.T.contiguous().T
    return out


def psd(J: torch.Tensor) -> torch.Tensor:
    """J Jᵀ in fp64 (the Gram of finite gradients: symmetric PSD up to rounding)."""
    Jd = J.double()
    return Jd @ Jd.T


def finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def float_finite(x: torch.Tensor) -> bool:
    return x.dtype in FLOATS and finite(x.double() if x.numel() else x)


tasks = st.integers(0, 5)
coords = st.integers(0, 9)


# ------------------------------------------------------------------------------ the ops


@pytest.mark.parametrize("backend", runnable("gram"))
@checked(100)
@given(J=matrices(tasks, coords, FLOATS + OTHERS))
def test_gram(backend: str, J: torch.Tensor) -> None:
    before = take(J)
    try:
        K = mtl_fast.gram(J, backend=backend)
    except CLEAR:
        assert not float_finite(J) or J.shape[0] == 0 or not finite(psd(J).float())
        assert_same(before, take(J))
        return
    T = J.shape[0]
    assert K.shape == (T, T) and finite(K)
    assert torch.equal(K, K.T) and bool((K.diagonal() >= 0).all())


@pytest.mark.parametrize("backend", runnable("min_norm"))
@checked(100)
@given(J=matrices(st.integers(1, 5), coords, bad_values=False), bad=st.booleans())
def test_min_norm(backend: str, J: torch.Tensor, bad: bool) -> None:
    K = psd(J).to(J.dtype if J.dtype in (torch.float32, torch.float64) else torch.float32)
    if bad:
        K[0, 0] = NAN
    try:
        w = mtl_fast.min_norm(K, backend=backend)
    except CLEAR:
        assert not finite(K)
        return
    assert finite(K) or bad is False
    assert w.shape == (K.shape[0],) and finite(w)
    assert bool((w >= 0).all()) and math.isclose(float(w.double().sum()), 1.0, abs_tol=1e-5)


@pytest.mark.parametrize("backend", runnable("combine"))
@checked(100)
@given(
    J=matrices(st.integers(0, 4), coords, FLOATS + OTHERS),
    w_bad=st.sampled_from([None, NAN, "bool", "short"]),
)
def test_combine(backend: str, J: torch.Tensor, w_bad: Any) -> None:
    T = J.shape[0]
    w = torch.linspace(-1, 1, T)
    if w_bad == "bool":
        w = w > 0
    elif w_bad == "short":
        w = w[:-1]
    elif w_bad is not None and T > 0:
        w[0] = w_bad
    try:
        d = mtl_fast.combine(J, w, backend=backend)
    except CLEAR:
        return
    assert (w_bad is None or (T == 0 and w_bad != "bool")) and J.dtype in FLOATS
    assert d.shape == (J.shape[1],) and d.dtype == J.dtype
    if float_finite(J) and finite(J.double().abs().sum(0) * 2):
        assert finite(d) or J.dtype in (torch.float16,)  # fp16 may overflow its 65504


@pytest.mark.parametrize("backend", runnable("dual_cone"))
@checked(60)
@given(
    J=matrices(st.integers(1, 4), coords, [torch.float32, torch.float64], bad_values=False),
    U=matrices(st.integers(1, 3), st.just(4), FLOATS),
)
def test_dual_cone_projection(backend: str, J: torch.Tensor, U: torch.Tensor) -> None:
    G = psd(J).to(J.dtype)
    U = U[:, : G.shape[0]] if U.shape[1] >= G.shape[0] else U
    try:
        W = mtl_fast.dual_cone_projection(U, G, backend=backend)
    except CLEAR:
        assert not (finite(U.double()) and finite(G)) or U.shape[-1] != G.shape[0]
        return
    assert W.shape == U.shape and finite(W)
    assert bool((W >= U.to(W.dtype)).all())  # W ≥ U exactly, in W's dtype


@checked(60)
@given(J=matrices(st.integers(1, 4), coords, FLOATS), which=st.sampled_from(["upgrad", "dual"]))
def test_projection_weightings(J: torch.Tensor, which: str) -> None:
    fn = mtl_fast.upgrad_weights if which == "upgrad" else mtl_fast.dualproj_weights
    K = psd(J).to(J.dtype) if finite(J.double()) else J.double()[:, :1] @ J.double()[:, :1].T
    try:
        w = fn(K)
    except CLEAR:
        assert not finite(K) or K.shape[0] != K.shape[1]
        return
    assert w.shape == (K.shape[0],) and finite(w)


@checked(60)
@given(J=matrices(tasks, coords, FLOATS + OTHERS))
def test_diagnostics(J: torch.Tensor) -> None:
    try:
        C = sign_conflict(J)
    except CLEAR:
        assert not float_finite(J) or 0 in J.shape
    else:
        assert finite(C) and bool(((C >= 0) & (C <= 1)).all()) and torch.equal(C, C.T)
    if J.dtype not in FLOATS:
        return
    K = psd(J) if float_finite(J) else J.double() @ J.double().T
    for fn, low in ((cosine_similarity, -1.0), (magnitude_similarity, 0.0)):
        try:
            S = fn(K)
        except CLEAR:
            assert not finite(K)
            continue
        assert finite(S) and bool(((S >= low) & (S <= 1)).all())


# ----------------------------------------------------------------------- combine_adam


hyper_values = st.fixed_dictionaries(
    {},
    optional={
        "lr": st.sampled_from([0.0, 1e-3, 1.0, NAN, INF, -1e-3, True]),
        "eps": st.sampled_from([0.0, 1e-8, -1.0, NAN]),
        "weight_decay": st.sampled_from([0.0, 0.1, -0.1, INF]),
        "betas": st.sampled_from([(0.9, 0.999), (0.0, 0.0), (1.0, 0.9), (0.9,), (0.9, NAN)]),
    },
)


def valid_hyper(h: dict[str, Any]) -> bool:
    def ok(x: Any) -> bool:
        return not isinstance(x, bool) and math.isfinite(x) and x >= 0

    betas = h.get("betas", (0.9, 0.999))
    return (
        all(ok(h[k]) for k in ("lr", "eps", "weight_decay") if k in h)
        and len(betas) == 2
        and all(ok(b) and b < 1 for b in betas)
    )


@pytest.mark.parametrize("backend", runnable("combine_adam"))
@checked(100)
@given(
    J=matrices(st.integers(0, 4), st.integers(0, 6), FLOATS + OTHERS),
    hyper=hyper_values,
    pdtype=st.sampled_from([torch.float32, torch.float64, torch.float16]),
)
def test_combine_adam(backend: str, J: torch.Tensor, hyper: dict[str, Any], pdtype) -> None:
    T, P = J.shape
    gen = torch.Generator().manual_seed(T * 7 + P)
    state = [torch.randn(P, generator=gen).to(pdtype), torch.rand(P).to(pdtype)]
    state += [torch.rand(P).to(pdtype), torch.ones(1)]
    w = torch.full((T,), 1.0 / max(T, 1))
    before = take(state)
    try:
        mtl_fast.combine_adam(J, w, *state, backend=backend, **hyper)
    except CLEAR:
        assert_same(before, take(state))
        assert not (valid_hyper(hyper) and float_finite(J) and T > 0) or pdtype == torch.float16
        return
    assert valid_hyper(hyper) and J.dtype in FLOATS and T > 0 and pdtype != torch.float16
    assert state[3].item() == 2.0
    if finite(J.double().abs().sum(0)) and float_finite(J):
        assert all(finite(x) for x in state) or hyper.get("lr", 1e-3) * 1e30 > 1e30


# ----------------------------------------------------------------------- MultiAdam


def make_optimizer(P: int, dtype: torch.dtype, **kw: Any) -> tuple[Any, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(P)
    params = [torch.nn.Parameter(torch.randn(P, generator=gen).to(dtype))]
    opt = mtl_fast.MultiAdam(params, num_tasks=3, lr=1e-2, **kw)
    opt.step(torch.randn(3, P, generator=gen).to(dtype))
    return opt, params


GOOD_TASKS = [None, [0], [2, 1], [0, 1, 2], torch.tensor([0, 2])]
BAD_TASKS = [[], [0, 0], [3], [-1], [True], [1.0], 1, torch.tensor([0.0]), torch.tensor([[1]])]


@st.composite
def weights_for(draw: st.DrawFn, S: int) -> Any:
    """Weights for |S| tasks: mostly valid (None, numbers, a float tensor), else one defect."""
    kind = draw(st.sampled_from(["none", "list", "tensor", "nan", "bool", "short", "int"]))
    values = [draw(st.sampled_from([1.0, -0.5, 0, 2, 1e-30, 1e30])) for _ in range(S)]
    if kind == "none":
        return None
    if kind == "list":
        return values
    if kind == "tensor":
        return torch.tensor([float(v) for v in values], dtype=draw(st.sampled_from(FLOATS)))
    if kind == "nan":
        values[draw(st.integers(0, S - 1))] = draw(st.sampled_from([NAN, INF, -INF]))
        return values if draw(st.booleans()) else torch.tensor(values)
    if kind == "bool":
        return [True] * S if draw(st.booleans()) else torch.ones(S, dtype=torch.bool)
    if kind == "short":
        return values[:-1]
    return torch.ones(S, dtype=torch.int64)


def weights_valid(weights: Any) -> bool:
    if weights is None:
        return True
    w = torch.as_tensor(weights)
    return w.dtype in FLOATS or (isinstance(weights, list) and w.dtype == torch.int64)


@pytest.mark.parametrize("backend", runnable("multi_adam"))
@checked(100)
@given(data=st.data(), mode=st.sampled_from(["raise", "skip"]))
def test_multi_adam_step(backend: str, data: st.DataObject, mode: str) -> None:
    """A step with one or more defects (tasks, weights, gradient rows, dtype, NaN/Inf) is
    refused and changes nothing; a skipped step changes nothing; a taken step keeps finite
    parameters when its gradients and weights are finite."""
    good_tasks = data.draw(st.sampled_from([True, True, True, False]))
    tasks_ = data.draw(st.sampled_from(GOOD_TASKS if good_tasks else BAD_TASKS))
    S = 3 if tasks_ is None else len(tasks_) if good_tasks else 2
    weights = data.draw(weights_for(max(S, 1)))
    rows = data.draw(st.sampled_from([3, S, 4]))
    G = data.draw(matrices(st.just(rows), st.sampled_from([5, 5, 5, 6]), FLOATS + OTHERS[:2]))
    pdtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float64]))
    opt, params = make_optimizer(5, pdtype, on_nonfinite=mode, backend=backend)
    before = optimizer_state(opt, params)
    valid = (
        good_tasks
        and weights_valid(weights)
        and (weights is None or len(weights) == S)
        and G.shape[1] == 5
        and G.dtype in FLOATS
        and rows in (3, S)
    )
    w_finite = weights is None or finite(torch.as_tensor(weights).double())
    try:
        taken = opt.step(G, tasks=tasks_, weights=weights)
    except CLEAR:
        assert_same(before, optimizer_state(opt, params))
        assert not (valid and w_finite and finite(G.double())) or mode == "raise"
        return
    assert valid and w_finite, (tasks_, weights, tuple(G.shape), G.dtype)
    if not taken:  # skipped: a stepped gradient row was not finite, and nothing moved
        assert mode == "skip" and opt.last_skipped
        assert_same(before, optimizer_state(opt, params))
    elif (
        finite(G.double())
        and float(torch.as_tensor(1.0 if weights is None else weights).abs().max()) < 1e3
    ):
        assert all(finite(p.detach().double()) for p in params)


corruptions = st.sampled_from(
    [
        ("steps", None),
        ("steps", torch.ones(1)),
        ("steps", torch.tensor([1.0, 2.0, 0.5])),
        ("exp_avg", torch.zeros(5)),
        ("exp_avg", torch.full((3, 5), NAN)),
        ("exp_avg_sq", -torch.ones(3, 5)),
        ("exp_avg_sq", torch.ones(3, 5, dtype=torch.float64)),
        ("num_tasks", 4),
        ("param_group", {"lr": 0.1}),
        ("lr", NAN),
        ("betas", (0.9,)),
        ("ok", None),
    ]
)


@checked(60)
@given(corruption=corruptions, also=corruptions)
def test_multi_adam_load_state_dict(corruption, also) -> None:
    source, _ = make_optimizer(5, torch.float32)
    source.step(torch.randn(3, 5))
    saved = source.state_dict()
    for key, value in (corruption, also):
        if key == "ok":
            continue
        if key in ("lr", "betas"):
            saved["param_group"] = {**saved["param_group"], key: value}
        elif value is None:
            saved.pop(key, None)
        else:
            saved[key] = value
    opt, params = make_optimizer(5, torch.float32)
    before = optimizer_state(opt, params)
    try:
        opt.load_state_dict(saved)
    except CLEAR:
        assert (corruption[0], also[0]) != ("ok", "ok")
        assert_same(before, optimizer_state(opt, params))
        return
    assert corruption[0] == also[0] == "ok"
    assert torch.equal(opt.exp_avg, source.exp_avg) and torch.equal(opt.steps, source.steps)


@checked(60)
@given(
    kinds=st.lists(
        st.sampled_from(["ok", "detached", "constant", "vector", "nan", "int"]),
        min_size=1,
        max_size=3,
    ),
    batched=st.booleans(),
)
def test_task_gradients_backward(kinds: list[str], batched: bool) -> None:
    torch.manual_seed(0)
    trunk = torch.nn.Linear(3, 2)
    arena = mtl_fast.TaskGradients(trunk.parameters(), num_tasks=2)
    arena.J.normal_()
    out = trunk(torch.randn(4, 3))
    make = {
        "ok": lambda: out.pow(2).sum(),
        "detached": lambda: out.sum().detach(),
        "constant": lambda: torch.tensor(1.0),
        "vector": lambda: out.sum(0),
        "nan": lambda: out.sum() * NAN,
        "int": lambda: torch.tensor(1),
    }
    losses = [make[k]() for k in kinds]
    before = take(arena.J)
    try:
        arena.backward(losses, batched=batched, retain_graph=True)
    except CLEAR:
        assert_same(before, take(arena.J))
        assert len(kinds) != 2 or any(k not in ("ok", "nan") for k in kinds)
        return
    assert len(kinds) == 2 and all(k in ("ok", "nan") for k in kinds)
    for t, k in enumerate(kinds):
        if k == "nan":
            assert not finite(arena.J[t])
        elif not batched or "nan" not in kinds:
            # One vmapped backward pass multiplies the NaN loss's gradient by the zero
            # cotangent of the other rows (0 · NaN = NaN): only the sequential rows are exact.
            assert finite(arena.J[t])


# ----------------------------------------------------------------------- Triton, interpreted


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
@pytest.mark.parametrize("op", ["gram", "combine", "min_norm", "multi_adam"])
@checked(6)
@given(J=matrices(st.integers(1, 3), st.integers(1, 4), [torch.float32], bad_values=True))
def test_triton_interpreted(op: str, J: torch.Tensor) -> None:
    if not runnable(op, ("triton",)):
        pytest.skip("triton cannot run here")
    try:
        if op == "multi_adam":
            p = torch.nn.Parameter(torch.zeros(J.shape[1]))
            opt = mtl_fast.MultiAdam([p], num_tasks=J.shape[0], backend="triton")
            before = take(p)
            try:
                opt.step(J)
            except CLEAR:
                assert_same(before, take(p))
                raise
            out = p.detach()
        elif op == "gram":
            out = mtl_fast.gram(J, backend="triton")
        elif op == "combine":
            out = mtl_fast.combine(J, torch.ones(J.shape[0]), backend="triton")
        else:
            out = mtl_fast.min_norm(psd(J).float() if finite(J) else J @ J.T, backend="triton")
    except CLEAR:  # a NaN/Inf, or a Gram that overflows fp32
        assert not finite(J) or not finite(psd(J).float())
        return
    assert finite(out)
