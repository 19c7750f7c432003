"""mtl_fast.integrations.torchjd and the dual-cone ops against TorchJD's own results (its
QuadprogProjector, UPGrad and DualProj), on random and degenerate Grams; the one-line swap with
autojac and autogram; the import without TorchJD."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch

import mtl_fast
from tests.ops.test_dual_cone import kinds, rel_err

torchjd = pytest.importorskip("torchjd")
pytest.importorskip("quadprog")  # TorchJD's own projector, the reference of these tests

from torchjd.aggregation import DualProjWeighting as JDDualProjWeighting  # noqa: E402
from torchjd.aggregation import UPGrad as JDUPGrad  # noqa: E402
from torchjd.aggregation import UPGradWeighting as JDUPGradWeighting  # noqa: E402
from torchjd.linalg import DualConeProjector, QuadprogProjector  # noqa: E402

from mtl_fast.integrations.torchjd import (  # noqa: E402
    DualProj,
    DualProjWeighting,
    Projector,
    UPGrad,
    UPGradWeighting,
)

# TorchJD normalises G in G's dtype before solving in float64; in float32 that rounding (6e-8
# relative) is amplified by cond(G̃) ≤ 1e4. Against TorchJD fed the same values in float64 only
# the output rounding remains.
TOL_SAME_VALUES = {torch.float64: 1e-9, torch.float32: 1e-6}
TOL_FLOAT32_TORCHJD = 2e-3


@pytest.mark.parametrize("T", [2, 3, 10, 40, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weights_agree_with_torchjd(T: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(T)
    for name, G in kinds(T, gen).items():
        if T == 128 and name not in ("conflicting", "agreeing", "zero"):
            continue  # quadprog takes ~0.5 s per UPGrad call at T = 128
        K = G.to(dtype)
        K64 = K.double()
        for ours, theirs in (
            (UPGradWeighting(), JDUPGradWeighting()),
            (DualProjWeighting(), JDDualProjWeighting()),
        ):
            w = ours(K)
            assert w.dtype == theirs(K).dtype == dtype
            err = rel_err(w, theirs(K))
            assert err <= TOL_FLOAT32_TORCHJD, f"{type(ours).__name__} {name}: {err:.1e}"
            err = rel_err(w, theirs(K64))
            assert err <= TOL_SAME_VALUES[dtype], f"{type(ours).__name__} {name}: {err:.1e}"
        # The public ops give the same weights (summed in float64).
        tol = TOL_SAME_VALUES[dtype]
        assert rel_err(mtl_fast.upgrad_weights(K), JDUPGradWeighting()(K64)) <= tol, name
        assert rel_err(mtl_fast.dualproj_weights(K), JDDualProjWeighting()(K64)) <= tol, name
        # The projector itself, on TorchJD's U of shape [..., m] (all leading dims are rows).
        U = torch.randn(2, 3, T, generator=gen, dtype=torch.float64).to(dtype)
        W = Projector()(U, K)
        W_jd = QuadprogProjector()(U, K64)
        assert W.shape == W_jd.shape == U.shape and W.dtype == dtype
        assert rel_err(W, W_jd) <= tol, f"projector {name}: {rel_err(W, W_jd):.1e}"
        assert rel_err(mtl_fast.dual_cone_projection(U, K), W_jd) <= tol, name


def test_preference_vector_and_projector_options_match_torchjd() -> None:
    gen = torch.Generator().manual_seed(11)
    K = kinds(7, gen)["conflicting"] + kinds(7, gen)["full-rank"] * 0.1
    pref = torch.tensor([0.3, 0.0, 1.2, 0.5, -0.2, 2.0, 0.1], dtype=torch.float64)
    torch.testing.assert_close(
        UPGradWeighting(pref)(K), JDUPGradWeighting(pref)(K), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(
        DualProjWeighting(pref)(K), JDDualProjWeighting(pref)(K), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(
        mtl_fast.upgrad_weights(K, pref=pref), JDUPGradWeighting(pref)(K), atol=1e-10, rtol=0
    )
    ours, theirs = (
        Projector(norm_eps=1e-2, reg_eps=1e-2),
        QuadprogProjector(norm_eps=1e-2, reg_eps=1e-2),
    )
    U = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(ours(U, K), theirs(U, K), atol=1e-10, rtol=0)
    # Below norm_eps the Gram is dropped: both give max(u, 0).
    tiny = K * 1e-9
    torch.testing.assert_close(Projector()(U, tiny), QuadprogProjector()(U, tiny))
    torch.testing.assert_close(Projector()(U, tiny), U.clamp_min(0))
    # A 1-D U (DualProj's call) and half precision keep TorchJD's shape and dtype conventions.
    assert Projector()(U[0], K).shape == (7,)
    assert Projector()(U[0], K.half()).dtype == torch.float16


def test_same_constructor_and_validation_as_quadprog_projector() -> None:
    assert issubclass(Projector, DualConeProjector)
    theirs = inspect.signature(QuadprogProjector.__init__).parameters
    ours = inspect.signature(Projector.__init__).parameters
    for name, param in theirs.items():
        assert (
            name in ours and ours[name].kind == param.kind and ours[name].default == param.default
        )
    assert repr(Projector()) == "Projector(norm_eps=0.0001, reg_eps=0.0001)"
    with pytest.raises(ValueError, match="norm_eps must be non-negative"):
        Projector(norm_eps=-1.0)
    p = Projector()
    with pytest.raises(ValueError, match="reg_eps must be non-negative"):
        p.reg_eps = -1e-3
    for cls, jd in ((UPGradWeighting, JDUPGradWeighting), (DualProjWeighting, JDDualProjWeighting)):
        assert issubclass(cls, jd)
        assert list(inspect.signature(cls.__init__).parameters) == list(
            inspect.signature(jd.__init__).parameters
        )
        w = cls()
        assert isinstance(w.projector, Projector)
        w.projector = None  # TorchJD's setter would fall back to quadprog; ours to Projector
        assert isinstance(w.projector, Projector)
        custom = QuadprogProjector()
        assert cls(projector=custom).projector is custom
    for agg in (UPGrad(), DualProj()):
        assert isinstance(agg.projector, Projector)
        agg.projector = None
        assert isinstance(agg.projector, Projector)


def test_one_line_swap_with_autojac() -> None:
    from torchjd.autojac import jac_to_grad, mtl_backward

    from tests.strategy_models import Tiny, batches

    T = 3
    grads = []
    for aggregator in (JDUPGrad(), UPGrad()):
        model = Tiny(T, dtype=torch.float64)
        (x, y) = batches(T, 1, dtype=torch.float64)[0]
        losses, z = model.losses(x, y)
        mtl_backward(losses, features=z)
        jac_to_grad(list(model.trunk.parameters()), aggregator)
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-12)


def test_one_line_swap_with_autogram() -> None:
    from torchjd.autogram import Engine

    results = []
    for weighting in (JDUPGradWeighting(), UPGradWeighting()):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        model.double()
        engine = Engine(model, batch_dim=0)
        x = torch.randn(16, 5, dtype=torch.float64)
        y = torch.randn(16, dtype=torch.float64)
        losses = (model(x).squeeze(1) - y).pow(2)  # per-sample losses: T = 16
        gramian = engine.compute_gramian(losses)
        weights = weighting(gramian)
        losses.backward(weights)
        results.append((weights, [p.grad.clone() for p in model.parameters()]))
    (w_jd, g_jd), (w, g) = results
    torch.testing.assert_close(w, w_jd, rtol=1e-8, atol=1e-12)
    for a, b in zip(g_jd, g):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-12)


def test_the_core_never_imports_torchjd_and_a_missing_torchjd_says_how_to_install() -> None:
    code = (
        "import sys, mtl_fast, mtl_fast.integrations, mtl_fast.strategies, mtl_fast.tools.bench\n"
        "assert 'torchjd' not in sys.modules, 'the core imported torchjd'\n"
        "sys.modules['torchjd'] = None  # as if it were not installed\n"
        "try:\n"
        "    import mtl_fast.integrations.torchjd\n"
        "except ImportError as exc:\n"
        "    assert \"pip install 'mtl-fast[peers]'\" in str(exc), exc\n"
        "else:\n"
        "    raise SystemExit('imported without torchjd')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
