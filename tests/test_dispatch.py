"""The dispatch point: backends(), explicit backends that cannot run, MTL_FAST_BACKEND."""

from __future__ import annotations

import pytest
import torch

import mtl_fast
from mtl_fast._core import dispatch as _dispatch


def test_reference_is_always_available() -> None:
    status = mtl_fast.backends()
    assert set(status) == {"reference", "triton", "cuda", "cpu"}
    assert status["reference"].available and status["reference"].reason is None
    assert "min_norm" in status["reference"].ops
    for s in status.values():
        assert s.available or (s.reason and isinstance(s.reason, str)), s


def test_auto_on_cpu_tensors_uses_the_compiled_cpu_backend_or_the_reference() -> None:
    # The compiled CPU kernels when they are built (gram, combine, min_norm); else the
    # reference; every other op runs the reference on CPU tensors.
    built = mtl_fast.backends()["cpu"].available
    for op in ("gram", "combine", "min_norm"):
        expected = "cpu" if built and op in mtl_fast.backends()["cpu"].ops else "reference"
        assert _dispatch.resolve_name(op, "auto", torch.device("cpu")) == expected
    assert _dispatch.resolve_name("multi_adam", "auto", torch.device("cpu")) == "reference"


def test_explicit_backend_that_cannot_run_says_why() -> None:
    status = mtl_fast.backends()
    J = torch.randn(2, 3)
    for name in ("triton", "cuda"):
        if status[name].available and _dispatch._load(name).device_reason(J.device) is None:
            continue  # this backend does run on CPU tensors here (e.g. the Triton interpreter)
        with pytest.raises(mtl_fast.BackendUnavailableError, match=f"backend='{name}'"):
            mtl_fast.gram(J, backend=name)


def test_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        mtl_fast.gram(torch.randn(2, 3), backend="tpu")


def test_environment_variable_sets_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTL_FAST_BACKEND", "reference")
    assert _dispatch.resolve_name("combine", None, torch.device("cpu")) == "reference"
    monkeypatch.setenv("MTL_FAST_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="MTL_FAST_BACKEND='nonsense'"):
        mtl_fast.gram(torch.randn(2, 3))


def test_missing_backend_reason_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_dispatch._MODULES, "cuda", "mtl_fast._no_such_backend")
    _dispatch._reset_cache()
    try:
        status = mtl_fast.backends()["cuda"]
        assert not status.available and "could not be imported" in (status.reason or "")
        with pytest.raises(mtl_fast.BackendUnavailableError, match="could not be imported"):
            mtl_fast.min_norm(torch.eye(3), backend="cuda")
    finally:
        _dispatch._reset_cache()


def test_task_limits_steer_auto_and_refuse_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A backend that declares T ≤ 4 for min_norm is passed over by "auto" for T = 5 and an
    explicit request names the limit."""
    import types

    fake = types.ModuleType("fake_backend")
    fake.OPS = frozenset({"min_norm"})  # type: ignore[attr-defined]
    fake.TASK_LIMITS = {"min_norm": 4}  # type: ignore[attr-defined]
    fake.device_reason = lambda device: None  # type: ignore[attr-defined]
    fake.min_norm = lambda K, **kw: torch.full(K.shape[:-1], float("nan"))  # type: ignore[attr-defined]
    monkeypatch.setitem(_dispatch._loaded, "cuda", fake)
    monkeypatch.setitem(_dispatch.AUTO_PREFERENCE, "min_norm", ("cuda",))
    meta = torch.device("cuda")  # resolution only: nothing runs on the device
    assert _dispatch.resolve_name("min_norm", "auto", meta, tasks=4) == "cuda"
    assert _dispatch.resolve_name("min_norm", "auto", meta, tasks=5) == "reference"
    with pytest.raises(mtl_fast.BackendUnavailableError, match="supports T ≤ 4 tasks, got T=5"):
        _dispatch.resolve_name("min_norm", "cuda", meta, tasks=5)


def test_triton_interpreter_that_cannot_run_with_this_numpy_says_why() -> None:
    pytest.importorskip("triton")
    from mtl_fast.kernels.triton.common import interpreter_problem

    reason = interpreter_problem("3.6.0", "2.4.6")
    assert reason is not None and "Triton 3.6.0" in reason and "numpy<2.4" in reason
    for triton_version, numpy_version in (("3.6.0", "2.3.5"), ("3.7.0", "2.4.6"), ("3.9.0", "2.5")):
        assert interpreter_problem(triton_version, numpy_version) is None


def test_resolution_runs_untraced_under_torch_compile() -> None:
    """Public ops compile as one graph even when no backend was loaded before tracing: the
    dispatch imports and loads backends outside the trace (dynamo cannot trace importlib), and
    check_finite=None does not read values back inside torch.compile."""
    J = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    w = torch.full((4,), 0.25)

    def step(J: torch.Tensor) -> torch.Tensor:
        return mtl_fast.gram(J) @ mtl_fast.combine(J, w)[:4]

    _dispatch._reset_cache()
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(step)(J)
        assert explained.graph_break_count == 0, explained.break_reasons
        compiled = torch.compile(step, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(J), step(J))
    finally:
        torch._dynamo.reset()
