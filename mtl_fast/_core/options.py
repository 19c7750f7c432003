"""Keyword options declared once.

A group of keyword-only arguments that several callables share (the dual-cone solver's, every
strategy's) is declared in one place, with its defaults where the values are kept and checked
(a frozen dataclass, or a base class's ``__init__``). The callables that take the group write
``**options: Unpack[Group]``, with ``Group`` a :class:`~typing.TypedDict` of the same names, so
that a static checker (mypy, an IDE) checks every keyword; :func:`spells` writes the group back
into the callable's runtime signature, so that ``help()``, :func:`inspect.signature` and the API
docs show every argument with its default, as if it were written out.

Example:
    >>> from dataclasses import dataclass
    >>> from typing import TypedDict
    >>> @dataclass(frozen=True)
    ... class Solver:
    ...     max_iter: int = 50
    ...     tol: float = 1e-6
    >>> class SolverKwargs(TypedDict, total=False):
    ...     max_iter: int
    ...     tol: float
    >>> @spells(Solver, SolverKwargs)
    ... def solve(x: float, /, *, scale: float = 1.0, **options: int | float) -> float:
    ...     return scale * x * Solver(**options).tol
    >>> import inspect
    >>> [(p.name, p.default) for p in inspect.signature(solve).parameters.values()][1:]
    [('scale', 1.0), ('max_iter', 50), ('tol', 1e-06)]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["spelled_names", "spells"]

F = TypeVar("F", bound=Callable[..., Any])


def spelled_names(group: type) -> tuple[str, ...]:
    """The keys of the TypedDict ``group`` (its bases' first), in declaration order."""
    return tuple(group.__annotations__)


def spells(source: Callable[..., Any], group: type) -> Callable[[F], F]:
    """Decorator: the runtime signature of a function (or ``__init__``, or a class: its own
    ``__init__``) whose ``**options`` are typed ``Unpack[group]``, with ``**options`` replaced
    by the keyword-only parameters named in ``group``, their annotations and defaults taken from
    ``source``'s signature.

    Names the function spells itself stay as it spells them. Raises ``TypeError`` at import when
    the function has no ``**options`` or ``source`` lacks one of ``group``'s names, so that the
    TypedDict the checkers read and the defaults the code uses cannot drift apart.
    """
    names = spelled_names(group)
    given = inspect.signature(source).parameters
    missing = [name for name in names if name not in given]
    if missing:
        raise TypeError(f"{group.__name__} names {missing}, which {source!r} does not take")

    def decorate(fn: F) -> F:
        if isinstance(fn, type):  # a class: its own __init__
            if "__init__" not in vars(fn):
                raise TypeError(f"{fn.__qualname__} has no __init__ of its own to spell")
            decorate(vars(fn)["__init__"])
            return fn
        params = list(inspect.signature(fn).parameters.values())
        if not params or params[-1].kind is not inspect.Parameter.VAR_KEYWORD:
            raise TypeError(f"{fn.__qualname__} has no **options to spell as {group.__name__}")
        own = {p.name for p in params}
        spelled = [
            given[name].replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for name in names
            if name not in own
        ]
        signature = inspect.signature(fn).replace(parameters=params[:-1] + spelled)
        fn.__signature__ = signature  # type: ignore[attr-defined]
        return fn

    return decorate
