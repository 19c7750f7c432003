"""mtl_fast.integrations.torchjd: MGDAWeighting against TorchJD's and inside its pipelines."""

from __future__ import annotations

import pytest
import torch
from torch import nn

torchjd = pytest.importorskip("torchjd", reason="TorchJD is not installed (mtl-fast[peers])")

from torchjd.aggregation import GramianWeightedAggregator  # noqa: E402
from torchjd.aggregation import MGDAWeighting as TorchJDMGDAWeighting  # noqa: E402
from torchjd.autogram import Engine  # noqa: E402
from torchjd.autojac import jac_to_grad, mtl_backward  # noqa: E402

from mtl_fast.integrations.torchjd import MGDAWeighting  # noqa: E402


def random_gramian(T: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    J = torch.randn(T, 40, generator=gen, dtype=dtype)
    J[1] = -J[0] + 0.1 * J[1]  # a conflict, so the optimum is not a vertex
    return J @ J.T


@pytest.mark.parametrize("T", [2, 3, 7, 16])
def test_same_optimum_as_torchjd_tightly_solved(T: int) -> None:
    G = random_gramian(T, T)
    ours = MGDAWeighting(epsilon=1e-12, max_iters=1000)(G)
    theirs = TorchJDMGDAWeighting(epsilon=1e-12, max_iters=100_000)(G)
    assert ours.dtype == G.dtype and ours.shape == (T,)
    assert float(ours.sum()) == pytest.approx(1.0, abs=1e-12) and bool((ours >= 0).all())
    # The min-norm point d = Jᵀw is unique (w need not be): compare the objective wᵀGw.
    f_ours, f_theirs = float(ours @ G @ ours), float(theirs @ G @ theirs)
    assert f_ours <= f_theirs + 1e-9 * float(G.diagonal().max())


@pytest.mark.parametrize("T", [3, 10])
def test_defaults_at_least_as_good_as_torchjd_defaults(T: int) -> None:
    G = random_gramian(T, 100 + T, torch.float32)
    ours, theirs = MGDAWeighting()(G), TorchJDMGDAWeighting()(G)
    scale = float(G.diagonal().max())
    assert float(ours @ G @ ours) <= float(theirs @ G @ theirs) + 1e-6 * scale


def test_constructor_arguments_and_their_checks() -> None:
    w = MGDAWeighting(epsilon=1e-4, max_iters=7)
    assert (w.epsilon, w.max_iters) == (1e-4, 7)
    assert repr(w) == "MGDAWeighting(epsilon=0.0001, max_iters=7)"
    for bad in (0, -1.0, float("nan"), True):
        with pytest.raises(ValueError, match="epsilon must be positive"):
            MGDAWeighting(epsilon=bad)
    for bad_iters in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="max_iters must be a positive integer"):
            MGDAWeighting(max_iters=bad_iters)  # type: ignore[arg-type]


def model(T: int) -> tuple[nn.Module, nn.ModuleList, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 4))
    heads = nn.ModuleList(nn.Linear(4, 1) for _ in range(T))
    return trunk, heads, torch.randn(16, 5), torch.randn(16, T)


def test_one_line_swap_in_autojac_pipeline() -> None:
    T = 3
    results = []
    for weighting in (TorchJDMGDAWeighting(epsilon=1e-9, max_iters=10_000), MGDAWeighting()):
        trunk, heads, x, y = model(T)
        z = trunk(x)
        losses = [nn.functional.mse_loss(h(z).squeeze(1), y[:, t]) for t, h in enumerate(heads)]
        mtl_backward(losses, features=z)
        jac_to_grad(trunk.parameters(), GramianWeightedAggregator(weighting))
        results.append(torch.cat([p.grad.reshape(-1) for p in trunk.parameters()]))
    torch.testing.assert_close(results[1], results[0], atol=1e-4, rtol=1e-3)


def test_one_line_swap_in_autogram_pipeline() -> None:
    T = 3
    trunk, heads, x, y = model(T)
    engine = Engine(trunk, batch_dim=None)
    z = trunk(x)
    losses = torch.stack(
        [nn.functional.mse_loss(h(z).squeeze(1), y[:, t]) for t, h in enumerate(heads)]
    )
    gramian = engine.compute_gramian(losses)
    weights = MGDAWeighting()(gramian)
    losses.backward(weights)
    assert weights.shape == (T,) and float(weights.sum()) == pytest.approx(1.0, abs=1e-5)
    assert all(p.grad is not None for p in trunk.parameters())
