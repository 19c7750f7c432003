"""The keyword groups the strategy constructors share, declared once.

Each group is a :class:`~typing.TypedDict` of the names a static checker reads from a
constructor's ``**options: Unpack[Group]``; the defaults stay in the base class ``__init__``
that keeps and checks the values (:class:`~mtl_fast.strategies.Strategy`,
:class:`~mtl_fast.strategies.CombineStrategy`,
:class:`~mtl_fast.strategies.SequentialStrategy`), and
:func:`~mtl_fast._core.options.spells` writes them back into every constructor's runtime
signature (``help()``, :func:`inspect.signature`).
"""

from __future__ import annotations

from typing import TypedDict

__all__ = ["ArenaKwargs", "BackendKwargs", "SequentialKwargs", "StrategyKwargs"]


class StrategyKwargs(TypedDict, total=False):
    """What every strategy takes (:class:`~mtl_fast.strategies.Strategy`)."""

    diagnostics_every: int
    on_nonfinite: str


class ArenaKwargs(StrategyKwargs, total=False):
    """The Gram-space strategies' (:class:`~mtl_fast.strategies.CombineStrategy`): the ops'
    backend and how the gradient arena is filled."""

    backend: str | None
    batched: bool | None
    chunk_size: int | None


class BackendKwargs(StrategyKwargs, total=False):
    """:class:`ArenaKwargs` but ``batched``, which the distributed Gram-space strategy spells
    itself (its default is False)."""

    backend: str | None
    chunk_size: int | None


class SequentialKwargs(StrategyKwargs, total=False):
    """The optimizer-owning strategies' (:class:`~mtl_fast.strategies.SequentialStrategy`):
    Adam(W) of the shared parameters and the heads, and the backend of its step."""

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    head_lr: float | None
    backend: str | None
