"""``mtl_fast._core.options.spells``: the runtime signature of a callable whose keyword group
is declared once."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TypedDict

import pytest

from mtl_fast._core.options import spelled_names, spells


@dataclass(frozen=True)
class Solver:
    max_iter: int = 50
    tol: float = 1e-6
    backend: str | None = None


class SolverKwargs(TypedDict, total=False):
    max_iter: int
    tol: float


class MoreKwargs(SolverKwargs, total=False):
    backend: str | None


def test_group_names_in_order_bases_first() -> None:
    assert spelled_names(SolverKwargs) == ("max_iter", "tol")
    assert spelled_names(MoreKwargs) == ("max_iter", "tol", "backend")


def test_function_signature_spells_the_group_with_the_sources_defaults() -> None:
    @spells(Solver, MoreKwargs)
    def solve(x: float, /, *, tol: float = 1e-3, **options: object) -> float:
        return x

    params = inspect.signature(solve).parameters
    assert list(params) == ["x", "tol", "max_iter", "backend"]
    assert params["tol"].default == 1e-3  # the function's own spelling wins
    assert params["max_iter"].default == 50
    assert params["backend"].default is None
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in ("max_iter", "backend"))
    assert solve(2.0) == 2.0  # the call itself is untouched


def test_class_signature_from_spelled_init_and_subclass_inherits_it() -> None:
    class Base:
        def __init__(self, a: int, *, max_iter: int = 7, tol: float = 0.5) -> None:
            self.a, self.max_iter, self.tol = a, max_iter, tol

    class Sub(Base):
        @spells(Base.__init__, SolverKwargs)
        def __init__(self, a: int, *, seed: int = 0, **options: object) -> None:
            super().__init__(a, **options)  # type: ignore[arg-type]
            self.seed = seed

    class Leaf(Sub):
        pass

    for cls in (Sub, Leaf):
        params = inspect.signature(cls).parameters
        assert list(params) == ["a", "seed", "max_iter", "tol"]
        assert (params["max_iter"].default, params["tol"].default) == (7, 0.5)
    assert Leaf(1, tol=0.25).tol == 0.25
    with pytest.raises(TypeError, match="tol2"):
        Leaf(1, tol2=0.25)


def test_refuses_a_group_the_source_does_not_take() -> None:
    def source(*, max_iter: int = 1) -> None: ...

    with pytest.raises(TypeError, match=r"SolverKwargs names \['tol'\]"):
        spells(source, SolverKwargs)


def test_refuses_a_function_without_var_keyword() -> None:
    with pytest.raises(TypeError, match="has no \\*\\*options"):

        @spells(Solver, SolverKwargs)
        def solve(x: float, *, max_iter: int = 1) -> float:
            return x


def test_a_decorated_class_spells_its_own_init() -> None:
    class Base:
        def __init__(self, a: int, *, max_iter: int = 7, tol: float = 0.5) -> None:
            self.a, self.max_iter, self.tol = a, max_iter, tol

    @spells(Base.__init__, SolverKwargs)
    class Sub(Base):
        def __init__(self, a: int, *, seed: int = 0, **options: object) -> None:
            super().__init__(a, **options)  # type: ignore[arg-type]
            self.seed = seed

    params = inspect.signature(Sub).parameters
    assert list(params) == ["a", "seed", "max_iter", "tol"]
    assert (params["max_iter"].default, params["tol"].default) == (7, 0.5)
    assert Sub(1, tol=0.25).tol == 0.25

    with pytest.raises(TypeError, match="has no __init__ of its own"):

        @spells(Base.__init__, SolverKwargs)
        class Leaf(Sub):
            pass
