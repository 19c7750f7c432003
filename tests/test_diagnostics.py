"""Diagnostics of Elich et al.: cosine / magnitude similarity, sign conflicts, path length."""

from __future__ import annotations

import importlib

import pytest
import torch

from mtl_fast.diagnostics import (
    PathLength,
    cosine_similarity,
    gradient_diagnostics,
    magnitude_similarity,
    sign_conflict,
)


def brute_sign_conflict(J: torch.Tensor) -> torch.Tensor:
    T = J.shape[0]
    out = torch.zeros(T, T, dtype=torch.float64)
    for i in range(T):
        for j in range(T):
            out[i, j] = (
                sum(1 for a, b in zip(J[i].tolist(), J[j].tolist()) if (a > 0 > b) or (a < 0 < b))
                / J.shape[1]
            )
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_sign_conflict_matches_a_coordinate_count(dtype, device):
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(5, 37, generator=gen)
    J[J.abs() < 0.3] = 0  # exact zeros never count
    J = J.to(dtype)
    got = sign_conflict(J.to(device), backend="reference").cpu()
    torch.testing.assert_close(got, brute_sign_conflict(J.float()), rtol=0, atol=1e-12)
    assert torch.equal(got, got.T) and bool((got.diagonal() == 0).all())


def test_sign_conflict_chunks_and_batches(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    J = torch.randn(2, 3, 50, generator=gen)
    whole = sign_conflict(J)
    sc_ref = importlib.import_module("mtl_fast.kernels.reference.sign_conflict")
    monkeypatch.setattr(sc_ref, "_CHUNK", 7)  # several chunks, the last one partial
    torch.testing.assert_close(sign_conflict(J), whole, rtol=0, atol=1e-15)
    assert whole.shape == (2, 3, 3)
    torch.testing.assert_close(whole[1], brute_sign_conflict(J[1]), rtol=0, atol=1e-12)


def test_sign_conflict_rejects_bad_input():
    with pytest.raises(ValueError, match="J"):
        sign_conflict(torch.zeros(3, 0))
    with pytest.raises(TypeError, match="J"):
        sign_conflict(torch.zeros(3, 4, dtype=torch.int64))


def test_cosine_and_magnitude_similarity_follow_their_definitions():
    gen = torch.Generator().manual_seed(2)
    J = torch.randn(4, 20, generator=gen, dtype=torch.float64) * torch.tensor(
        [[1.0], [10.0], [0.1], [1.0]], dtype=torch.float64
    )
    K = J @ J.T
    n = J.norm(dim=1)
    torch.testing.assert_close(cosine_similarity(K), (J / n[:, None]) @ (J / n[:, None]).T)
    expected = 2 * n[:, None] * n[None, :] / (n[:, None] ** 2 + n[None, :] ** 2)
    torch.testing.assert_close(magnitude_similarity(K), expected)
    # Magnitude similarity ignores direction; cosine ignores scale.
    scaled = K * 1e6
    torch.testing.assert_close(cosine_similarity(scaled), cosine_similarity(K))
    flipped = K.clone()
    flipped[0, 1:] *= -1
    flipped[1:, 0] *= -1
    torch.testing.assert_close(magnitude_similarity(flipped), magnitude_similarity(K))


def test_similarities_of_zero_gradients_are_finite():
    K = torch.zeros(3, 3)
    K[0, 0] = 4.0
    cos, mag = cosine_similarity(K), magnitude_similarity(K)
    assert bool(torch.isfinite(cos).all()) and bool(torch.isfinite(mag).all())
    assert float(cos[0, 1]) == 0.0 and float(mag[0, 1]) == 0.0 and float(mag[1, 2]) == 1.0


def test_gradient_diagnostics_bundle():
    J = torch.tensor([[1.0, -2.0, 0.0], [2.0, 2.0, 1.0]])
    d = gradient_diagnostics(J @ J.T, J, step=7, path_length=1.5)
    torch.testing.assert_close(d.norms, J.norm(dim=1))
    assert d.sign_conflict is not None and float(d.sign_conflict[0, 1]) == pytest.approx(1 / 3)
    record = d.to_dict()
    assert record["step"] == 7 and record["path_length"] == 1.5 and len(record["cosine"]) == 2


def test_path_length_sums_step_norms():
    a = torch.zeros(2, 2)
    b = torch.zeros(3)
    tracker = PathLength([a, b])
    steps = [torch.randn(7, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    total = 0.0
    for s in steps:
        a += s[:4].view(2, 2)
        b += s[4:]
        total += float(s.double().norm())
        assert tracker.update() == pytest.approx(total, rel=1e-6)
    state = tracker.state_dict()
    other = PathLength([a, b])
    other.load_state_dict(state)
    assert other.total == tracker.total


# ------------------------------------------------------------------------------ bad input

NAN = float("nan")


@pytest.mark.parametrize("fn", [cosine_similarity, magnitude_similarity])
def test_nonfinite_gram_is_refused_on_the_cpu_and_nan_when_unchecked(fn) -> None:
    """A NaN gradient used to come out as cosine 0 and magnitude similarity 1: silently
    'unrelated' or 'equal'. Checked (the CPU default) it is refused naming the task;
    unchecked, its row and column are NaN."""
    from mtl_fast import NonFiniteError

    K = torch.tensor([[1.0, 0.5, 0.0], [0.5, NAN, 0.5], [0.0, 0.5, 1.0]])
    with pytest.raises(NonFiniteError, match=r"task\(s\) \[1\]"):
        fn(K)
    out = fn(K, check_finite=False)
    assert bool(out[1].isnan().all()) and bool(out[:, 1].isnan().all())
    keep = torch.tensor([0, 2])
    assert bool(torch.isfinite(out[keep][:, keep]).all())


def test_sign_conflict_refuses_nan() -> None:
    from mtl_fast import NonFiniteError

    J = torch.ones(3, 5)
    J[2, 1] = NAN
    with pytest.raises(NonFiniteError, match=r"task\(s\) \[2\]"):
        sign_conflict(J)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(J=torch.ones(3, 4)), ValueError, r"J must have shape \(2, P\)"),
        (dict(J=[[1.0]] * 2), TypeError, "J must be a torch.Tensor"),
        (dict(J=torch.ones(2, 4, dtype=torch.int64)), TypeError, "J must have dtype"),
        (dict(step=-1), ValueError, "step must be an int"),
        (dict(path_length=float("inf")), ValueError, "path_length must be a finite number"),
        (dict(space="weights"), ValueError, "space must be one of"),
        (dict(check_finite=1), TypeError, "check_finite must be True, False or None"),
    ],
)
def test_gradient_diagnostics_names_bad_arguments(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        gradient_diagnostics(torch.eye(2), **kwargs)


def test_path_length_load_state_dict_is_checked_and_atomic() -> None:
    p = torch.zeros(3)
    tracker = PathLength([p])
    p += 1.0
    tracker.update()
    saved = tracker.state_dict()
    for bad in (
        {"total": 1.0},
        {**saved, "total": -1.0},
        {**saved, "previous": torch.zeros(4)},
        {**saved, "previous": torch.zeros(3, dtype=torch.float64)},
    ):
        with pytest.raises((TypeError, ValueError)):
            tracker.load_state_dict(bad)
        assert tracker.total == saved["total"] and torch.equal(tracker.previous, saved["previous"])
    with pytest.raises(TypeError, match="params must be an iterable"):
        PathLength(torch.zeros(3))
