"""The TorchJD stand-ins of mtl_fast.integrations.torchjd for PCGrad, IMTL-G, CAGrad, Nash-MTL,
Aligned-MTL and ConFIG: TorchJD's constructor arguments, TorchJD's weights, and use inside
TorchJD's own aggregators and ``mtl_backward``/``jac_to_grad``. Skipped without TorchJD; the
comparisons with TorchJD's CAGrad and Nash-MTL also need cvxpy."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

aggregation = pytest.importorskip("torchjd.aggregation")
from mtl_fast.integrations import torchjd as ours  # noqa: E402

F64 = torch.float64


def jacobians(T: int, seed: int, n: int = 4) -> list[torch.Tensor]:
    """Random, conflicting, positive and duplicated-row Jacobians (float64)."""
    gen = torch.Generator().manual_seed(seed)
    P = 3 * T + 5
    out = [
        torch.randn(T, P, generator=gen, dtype=F64),
        torch.randn(P, generator=gen, dtype=F64)
        * torch.tensor([(-1.0) ** t for t in range(T)])[:, None].to(F64)
        + 0.3 * torch.randn(T, P, generator=gen, dtype=F64),
        torch.randn(T, P, generator=gen, dtype=F64).abs(),
    ]
    dup = torch.randn(T, P, generator=gen, dtype=F64)
    dup[T // 2 :] = dup[: T - T // 2].clone()
    out.append(dup)
    return out[:n]


PAIRS = [
    ("PCGradWeighting", (), {}),
    ("IMTLGWeighting", (), {}),
    ("CAGradWeighting", (0.5,), {}),
    ("CAGradWeighting", (0.4, 1e-3), {}),
    ("AlignedMTLWeighting", (), {}),
    ("AlignedMTLWeighting", (None, "median"), {}),
    ("AlignedMTLWeighting", (), {"scale_mode": "rmse"}),
]


def test_constructors_take_torchjds_arguments() -> None:
    """Same parameter names, order and defaults as TorchJD's classes (ours may add
    keyword-only ones)."""
    pairs = [
        (ours.PCGradWeighting, aggregation.PCGradWeighting),
        (ours.IMTLGWeighting, aggregation.IMTLGWeighting),
        (ours.CAGradWeighting, aggregation.CAGradWeighting),
        (ours.AlignedMTLWeighting, aggregation.AlignedMTLWeighting),
        (ours.NashMTL, aggregation.NashMTL),
        (ours.NashMTLWeighting, aggregation.NashMTL),
        (ours.ConFIG, aggregation.ConFIG),
        (ours.ConFIGWeighting, aggregation.ConFIG),
    ]
    for mine, theirs in pairs:
        a = [
            (p.name, p.default)
            for p in inspect.signature(mine.__init__).parameters.values()
            if p.kind is not p.KEYWORD_ONLY
        ]
        b = [(p.name, p.default) for p in inspect.signature(theirs.__init__).parameters.values()]
        assert a == b, (mine, theirs)
        assert issubclass(mine, aggregation.Weighting) or issubclass(mine, aggregation.Aggregator)


@pytest.mark.parametrize(("name", "args", "kwargs"), PAIRS)
@pytest.mark.parametrize("T", [2, 3, 5, 10])
def test_weightings_give_torchjds_weights(name: str, args: tuple, kwargs: dict, T: int) -> None:
    for J in jacobians(T, 10 * T):
        K = J @ J.T
        mine = getattr(ours, name)(*args, **kwargs)
        torch.manual_seed(3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                expected = getattr(aggregation, name)(*args, **kwargs)(K)
            except ImportError as exc:  # TorchJD's CAGrad needs cvxpy
                pytest.skip(f"TorchJD's {name} cannot run here: {exc}")
        torch.manual_seed(3)  # PCGrad: the same orders
        got = mine(K)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        if name == "CAGradWeighting":
            # TorchJD's Clarabel stops at ~1e-8 gaps (docs/aggregators.md).
            torch.testing.assert_close(got @ J, expected @ J, rtol=5e-3, atol=5e-3)
        else:
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


def test_pcgrad_weighting_with_a_generator_is_reproducible() -> None:
    (J,) = jacobians(5, 0, n=2)[1:2]
    K = J @ J.T
    a = ours.PCGradWeighting(generator=torch.Generator().manual_seed(1))(K)
    b = ours.PCGradWeighting(generator=torch.Generator().manual_seed(1))(K)
    assert torch.equal(a, b)


def test_aggregators_match_torchjds_in_its_own_wrappers() -> None:
    for T in (2, 4, 7):
        for J in jacobians(T, T):
            for pref in (None, torch.linspace(0.5, 1.5, T, dtype=F64)):
                got = ours.ConFIG(pref)(J)
                expected = aggregation.ConFIG(pref)(J)
                torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-9 * float(J.norm()))
                wrapped = aggregation.GramianWeightedAggregator(ours.ConFIGWeighting(pref))(J)
                torch.testing.assert_close(wrapped, got)
            for scale_mode in ("min", "median", "rmse"):
                got = aggregation.GramianWeightedAggregator(
                    ours.AlignedMTLWeighting(None, scale_mode)
                )(J)
                expected = aggregation.AlignedMTL(None, scale_mode)(J)
                torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
            got = aggregation.GramianWeightedAggregator(ours.IMTLGWeighting())(J)
            torch.testing.assert_close(got, aggregation.IMTLG()(J), rtol=1e-9, atol=1e-10)
            torch.manual_seed(0)
            got = aggregation.GramianWeightedAggregator(ours.PCGradWeighting())(J)
            torch.manual_seed(0)
            torch.testing.assert_close(got, aggregation.PCGrad()(J), rtol=1e-10, atol=1e-10)


def test_nash_mtl_is_stateful_like_torchjds() -> None:
    T = 4
    Js = jacobians(T, 5, n=3)
    agg = ours.NashMTL(n_tasks=T, max_norm=0.0, update_weights_every=2)
    assert isinstance(agg, __import__("torchjd").Stateful)
    first = agg.weighting(Js[2])  # an update step: solves
    K = Js[2] @ Js[2].T
    torch.testing.assert_close(first * (K @ first), torch.ones(T, dtype=F64), rtol=1e-8, atol=0)
    # The next call reuses α (update_weights_every = 2), the one after recomputes it.
    assert torch.equal(agg.weighting(Js[0]), first)
    third = agg.weighting(Js[0])
    K0 = Js[0] @ Js[0].T
    torch.testing.assert_close(third * (K0 @ third), torch.ones(T, dtype=F64), rtol=1e-8, atol=0)
    agg.reset()
    assert torch.equal(agg.weighting(Js[2]), first)
    # Clipping: ‖Jᵀw‖ = max_norm.
    d = ours.NashMTL(n_tasks=T)(Js[2])
    assert abs(float(d.norm()) - 1.0) < 1e-12
    with pytest.raises(ValueError, match="n_tasks rows"):
        ours.NashMTL(n_tasks=T)(Js[2][:3])
    with pytest.raises(ValueError, match="optim_niter"):
        ours.NashMTL(n_tasks=T, optim_niter=0)


def test_nash_mtl_matches_torchjds_where_it_solves() -> None:
    pytest.importorskip("cvxpy")
    compared = 0
    for T in (2, 3, 5):
        for J in jacobians(T, 40 + T, n=3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                expected = aggregation.NashMTL(n_tasks=T)(J)
            got = ours.NashMTL(n_tasks=T)(J)
            if abs(float(expected.norm()) - 1) < 1e-6 and float((got - expected).norm()) < 1e-4:
                compared += 1
            elif T == 2 or J.min() >= 0:
                raise AssertionError(f"T={T}: {got} vs {expected}")
    assert compared > 0


def test_mtl_backward_and_jac_to_grad_with_our_aggregators() -> None:
    autojac = pytest.importorskip("torchjd.autojac")
    torch.manual_seed(0)
    trunk = torch.nn.Linear(5, 6)
    heads = [torch.nn.Linear(6, 1) for _ in range(3)]
    x = torch.randn(8, 5)
    for make in (
        lambda: aggregation.GramianWeightedAggregator(ours.CAGradWeighting(c=0.5)),
        lambda: ours.NashMTL(n_tasks=3),
        lambda: ours.ConFIG(),
    ):
        for p in trunk.parameters():
            p.grad = None
        z = trunk(x)
        losses = [h(z).pow(2).mean() for h in heads]
        autojac.mtl_backward(losses, features=z)
        autojac.jac_to_grad(list(trunk.parameters()), make())
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trunk.parameters())
