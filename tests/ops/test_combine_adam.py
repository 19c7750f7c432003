"""combine_adam (d = Σ_t w_t J_t, then one Adam(W) step with d, fused) on every backend:
against the reference's combine followed by its explicit Adam formula, in every J dtype, and the
public op against combine + torch.optim.AdamW."""

from __future__ import annotations

import pytest
import torch

import mtl_fast
from mtl_fast import NonFiniteError
from mtl_fast._core.contracts import AdamHyper, AdamRows, AdamState
from mtl_fast._core.precision import accumulation_dtype, relative_error
from mtl_fast.kernels import reference as ref
from tests.backends import for_backends
from tests.helpers import DTYPES, FP32, FP64, LOW, adam_tolerance

COLUMNS = [1, 7, 1000, 65537]


def reference_step(state: AdamState, J: torch.Tensor, w: torch.Tensor, hyper: AdamHyper) -> None:
    """The definition: the reference's combine, then its explicit Adam formula."""
    d = ref.combine(J.unsqueeze(0), w.unsqueeze(0))
    zero = torch.zeros(1, dtype=torch.int64)
    one = torch.ones(1, dtype=FP64)
    ref.multi_adam(state, AdamRows(d, zero, zero, one), hyper, fused=False)


@for_backends(
    "combine_adam",
    "dtype, P, lr_tensor",
    [(d, P, False) for d in DTYPES for P in COLUMNS] + [(FP32, 1000, True), (FP64, 7, True)],
    emulator=[(d, P, False) for d in DTYPES for P in (1, 7, 1000)] + [(FP32, 1000, True)],
)
def test_combine_adam_matches_the_reference(backend, dtype, P, lr_tensor) -> None:
    """``dtype`` is J's; the parameters and moments are fp64 for fp64 J, fp32 otherwise."""
    pdtype = FP64 if dtype == FP64 else FP32
    gen = torch.Generator().manual_seed(P + 1)
    Tn = 5
    tensors = [torch.randn(P, generator=gen).to(pdtype)]
    tensors += [torch.zeros(1, P, dtype=pdtype), torch.zeros(1, P, dtype=pdtype), torch.zeros(1)]
    ours = AdamState(*(backend.to(x.clone()) for x in tensors))
    theirs = AdamState(*(x.clone() for x in tensors))
    for k in range(7):
        J = torch.randn(Tn, P, generator=gen).to(dtype)
        w = torch.rand(Tn, generator=gen).to(accumulation_dtype(dtype))
        lr = torch.tensor(1e-2) if lr_tensor else 1e-2
        kw = dict(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01 * k)  # 0 first
        reference_step(theirs, J, w, AdamHyper(lr=lr, **kw))
        lr_ours = backend.to(lr) if lr_tensor else lr
        backend.op("combine_adam")(ours, backend.to(J), backend.to(w), AdamHyper(lr=lr_ours, **kw))
    # d is rounded to J's dtype: fp16/bf16 J are held to two ulps of it.
    tol = adam_tolerance(dtype if dtype in LOW else pdtype)
    for name in ("param", "exp_avg", "exp_avg_sq"):
        err = relative_error(getattr(ours, name).cpu(), getattr(theirs, name))
        assert err <= tol, (name, err)
    assert torch.equal(ours.step.cpu(), theirs.step)


@for_backends("combine_adam")
def test_combine_adam_equals_combine_then_adamw(backend) -> None:
    """The public op against combine + torch.optim.AdamW on the combined direction. The
    reference forms d as combine does, so its first moment is AdamW's bit for bit; a fused
    kernel sums in its own order (ADAM_TOL / 10 relative, as every Adam state)."""
    dev = backend.device
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(6, generator=gen).to(dev))
    adam = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1)
    flat = p.detach().clone()
    m, v, s = (torch.zeros(n, device=dev) for n in (6, 6, 1))
    for _ in range(5):
        J = torch.randn(3, 6, generator=gen).to(dev)
        w = torch.rand(3, generator=gen).to(dev)
        mtl_fast.combine_adam(
            J, w, flat, m, v, s, lr=1e-2, weight_decay=0.1, backend=backend.dispatch
        )
        p.grad = mtl_fast.combine(J, w, backend="reference")
        adam.step()
    torch.testing.assert_close(flat, p.detach(), rtol=2e-6, atol=1e-7)
    if backend.is_reference:
        assert torch.equal(m, adam.state[p]["exp_avg"])
    else:
        assert relative_error(m.cpu(), adam.state[p]["exp_avg"].cpu()) <= adam_tolerance(FP32)
    assert s.item() == 5


def test_combine_adam_rejects_bad_state() -> None:
    J, w = torch.zeros(2, 4), torch.ones(2)
    p, m, v, s = torch.zeros(4), torch.zeros(4), torch.zeros(4), torch.zeros(1)
    with pytest.raises(ValueError, match=r"exp_avg must be a contiguous \(4,\) tensor"):
        mtl_fast.combine_adam(J, w, p, torch.zeros(5), v, s)
    with pytest.raises(ValueError, match=r"step must be a \(1,\) float32 tensor"):
        mtl_fast.combine_adam(J, w, p, m, v, torch.zeros(1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"w must have shape \(2,\)"):
        mtl_fast.combine_adam(J, torch.ones(3), p, m, v, s)


def _state(P: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(P)
    return [
        torch.randn(P, generator=gen),
        torch.rand(P, generator=gen),
        torch.rand(P),
        torch.ones(1),
    ]


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "change, error, match",
    [
        (dict(lr=NAN), ValueError, "lr must be a finite number ≥ 0"),
        (dict(lr=-1e-3), ValueError, "lr must be a finite number ≥ 0"),
        (dict(lr=INF), ValueError, "lr must be a finite number ≥ 0"),
        (dict(lr=torch.tensor(NAN)), ValueError, "lr must be a finite number ≥ 0"),
        (dict(lr=torch.tensor([1e-3])), ValueError, "0-d tensor"),
        (dict(eps=-1e-8), ValueError, "eps must be a finite number ≥ 0"),
        (dict(weight_decay=-0.1), ValueError, "weight_decay must be a finite number ≥ 0"),
        (dict(weight_decay=INF), ValueError, "weight_decay must be a finite number ≥ 0"),
        (dict(betas=(1.0, 0.999)), ValueError, r"betas must each be in \[0, 1\)"),
        (dict(betas=(0.9, 1.5)), ValueError, r"betas\[1\]"),
        (dict(betas=(0.9,)), ValueError, "betas must be a pair"),
        (dict(check_finite="yes"), TypeError, "check_finite must be True, False or None"),
        (dict(backend="nope"), ValueError, "backend must be"),
    ],
)
def test_combine_adam_refuses_bad_hyperparameters_and_changes_nothing(change, error, match):
    J, w = torch.randn(2, 4), torch.ones(2)
    state = _state()
    before = [x.clone() for x in state]
    with pytest.raises(error, match=match):
        mtl_fast.combine_adam(J, w, *state, **change)
    for x, y in zip(state, before):
        assert torch.equal(x, y)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda J, w: (J.masked_fill(J > 0.5, NAN), w), NonFiniteError, "gradient J"),
        (lambda J, w: (J, torch.tensor([1.0, INF])), NonFiniteError, r"weights w .*\[1\]"),
        (lambda J, w: (torch.zeros(0, 4), torch.ones(0)), ValueError, "T ≥ 1"),
        (lambda J, w: (J, w.bool()), TypeError, "w must have dtype"),
        (lambda J, w: (J.to(torch.int32), w), TypeError, "J must have dtype"),
        (lambda J, w: (J.to(torch.complex64), w), TypeError, "J must have dtype"),
        (lambda J, w: (J[0], w), ValueError, r"J must have shape \(T, P\)"),
        (lambda J, w: (J.tolist(), w), TypeError, "J must be a torch.Tensor"),
    ],
)
def test_combine_adam_refuses_bad_inputs_and_changes_nothing(make, error, match):
    J, w = make(torch.rand(2, 4, generator=torch.Generator().manual_seed(0)), torch.ones(2))
    state = _state()
    before = [x.clone() for x in state]
    with pytest.raises(error, match=match):
        mtl_fast.combine_adam(J, w, *state)
    for x, y in zip(state, before):
        assert torch.equal(x, y)


def test_combine_adam_refuses_aliased_state() -> None:
    p, _, v, s = _state()
    with pytest.raises(ValueError, match="distinct buffers"):
        mtl_fast.combine_adam(torch.ones(2, 4), torch.ones(2), p, p, v, s)


def test_combine_adam_updates_a_parameter_that_requires_grad() -> None:
    """It runs under no_grad, as optimizers do: a leaf Parameter is updated in place."""
    p = torch.nn.Parameter(torch.zeros(4))
    m, v, s = torch.zeros(4), torch.zeros(4), torch.zeros(1)
    mtl_fast.combine_adam(torch.ones(2, 4), torch.ones(2), p, m, v, s, lr=0.1)
    assert s.item() == 1.0 and bool((p < 0).all())


def test_combine_adam_nonfinite_check_can_be_skipped() -> None:
    """check_finite=False (as on a GPU): no check, the NaN reaches the state."""
    p, m, v, s = _state()
    J = torch.full((2, 4), NAN)
    mtl_fast.combine_adam(J, torch.ones(2), p, m, v, s, check_finite=False)
    assert bool(p.isnan().all())
