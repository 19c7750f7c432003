"""Every backend implements each op it declares with the op's contract.

For each backend module (the three of the dispatch, importable without a GPU, Triton's compiler
or the CUDA extension, and the emulated CUDA device code of the op tests): it declares ``OPS``,
``unavailable_reason`` and ``device_reason``; each op in ``OPS`` is a function whose parameters
(names, kinds, order) are those of the op's Protocol ``__call__`` in
:mod:`mtl_fast._core.contracts`, and it is defined in the file ``OP_FILES`` names. A backend may
add keyword-only parameters with a default (the reference's ``fused``); annotations are not
compared (they are strings under ``from __future__ import annotations``). The emulated adapter is
one module, so ``OP_FILES`` does not apply to it.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Protocol

import pytest

from mtl_fast._core import dispatch
from mtl_fast._core.contracts import CONTRACTS, OP_FILES

BACKEND_MODULES = {name: f"mtl_fast.kernels.{name}" for name in dispatch.BACKEND_NAMES}
BACKEND_MODULES["cuda-emulated"] = "tests.emulated_cuda"


def shape(sig: inspect.Signature) -> list[tuple[str, inspect._ParameterKind]]:
    return [(p.name, p.kind) for p in sig.parameters.values()]


def bare(sig: inspect.Signature) -> str:
    """The signature without annotations: ``(K, /, *, max_iter, tol, sync_free)``."""
    params = [p.replace(annotation=p.empty) for p in sig.parameters.values()]
    return str(inspect.Signature(params))


def contract_signature(op: str) -> inspect.Signature:
    params = list(inspect.signature(CONTRACTS[op].__call__).parameters.values())
    assert params[0].name == "self"
    return inspect.Signature(params[1:])


def mismatch(fn, op: str) -> str | None:
    """Why ``fn`` does not have op's contract signature, or None."""
    want = shape(contract_signature(op))
    got = inspect.signature(fn)
    extra = list(got.parameters.values())[len(want) :]
    if shape(got)[: len(want)] != want:
        return f"is {bare(got)}, the contract is {bare(contract_signature(op))}"
    for p in extra:
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
            return f"adds {p.name!r} ({p.kind.description}): only keyword-only with a default"
    return None


@pytest.fixture(params=list(BACKEND_MODULES), ids=list(BACKEND_MODULES))
def backend_module(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return request.param, importlib.import_module(BACKEND_MODULES[request.param])


def test_contracts_cover_every_op_once() -> None:
    assert set(CONTRACTS) == set(OP_FILES) == set(dispatch.AUTO_PREFERENCE)
    for op, proto in CONTRACTS.items():
        assert issubclass(proto, Protocol) and callable(proto.__call__), op
        first = next(iter(contract_signature(op).parameters))
        assert first in ("J", "K", "U", "grads", "state"), op


def test_backend_declares_its_ops(backend_module) -> None:
    _, module = backend_module
    assert module.OPS and set(module.OPS) <= set(CONTRACTS), module.OPS
    assert callable(module.unavailable_reason) and callable(module.device_reason)
    assert set(getattr(module, "TASK_LIMITS", {})) <= set(module.OPS)


def test_backend_ops_have_the_contract_signature(backend_module) -> None:
    name, module = backend_module
    if not all(hasattr(module, op) for op in module.OPS):  # Triton not installed
        pytest.skip(f"{name}: its op functions are not defined here: {module.unavailable_reason()}")
    problems = []
    for op in sorted(module.OPS):
        fn = getattr(module, op, None)
        if not inspect.isfunction(fn):
            problems.append(f"{name}.{op} is {fn!r}, not a function")
            continue
        why = mismatch(fn, op)
        if why is not None:
            problems.append(f"{name}.{op} {why}")
        if module.__name__.startswith("mtl_fast.kernels."):
            where = f"{module.__name__}.{OP_FILES[op]}"
            if fn.__module__ != where:
                problems.append(f"{name}.{op} is defined in {fn.__module__}, not {where}")
    assert not problems, "\n".join(problems)


def test_the_signature_check_sees_mismatches() -> None:
    """Guard for the check above."""

    def good(K, /, *, max_iter, tol, sync_free, extra=1): ...
    def keyword_K(K, *, max_iter, tol, sync_free): ...
    def renamed(K, /, *, max_iter, tol, sync): ...
    def reordered(K, /, *, tol, max_iter, sync_free): ...
    def required_extra(K, /, *, max_iter, tol, sync_free, extra): ...

    assert mismatch(good, "min_norm") is None
    for bad in (keyword_K, renamed, reordered, required_extra):
        assert mismatch(bad, "min_norm") is not None, bad.__name__
