"""The one dispatch point: which backend runs an op on a given device.

Every public op takes ``backend="auto" | "reference" | "triton" | "cuda" | "cpu"`` (the
environment variable ``MTL_FAST_BACKEND`` sets the default). A backend is a sub-package of
``mtl_fast.kernels`` that exposes:

- ``unavailable_reason() -> str | None``: why the backend cannot run at all on this machine
  (missing package, no compiled extension, ...), or ``None``;
- ``device_reason(device) -> str | None``: why it cannot run on tensors of ``device``;
- ``OPS``: the names of the ops it implements, each a module-level function of that name
  (defined in the file :data:`~mtl_fast._core.contracts.OP_FILES` names: :func:`op_functions`
  collects them);
- optionally ``TASK_LIMITS``: ``{op: largest T it supports}``. ``"auto"`` passes over a backend
  whose limit the problem exceeds; an explicit request for it raises and names the limit.

An explicitly requested backend that cannot run raises :class:`BackendUnavailableError` with the
reason; ``"auto"`` falls back quietly to the best backend that can.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
from typing import Any, TypeVar

import torch

from mtl_fast._core.contracts import OP_FILES

BACKEND_NAMES: tuple[str, ...] = ("reference", "triton", "cuda", "cpu")
_MODULES = {name: f"mtl_fast.kernels.{name}" for name in BACKEND_NAMES}

# Preference of "auto" on a CUDA device, per op; the reference is always the last resort.
# Triton first everywhere until GPU benchmarks decide per op: neither kernel family has been
# timed on a GPU yet, and the CUDA extension is there only when a user built it.
AUTO_PREFERENCE: dict[str, tuple[str, ...]] = {
    "gram": ("triton", "cuda"),
    "gram_list": ("triton", "cuda"),
    "min_norm": ("triton", "cuda"),
    "combine": ("triton", "cuda"),
    "multi_adam": ("triton", "cuda"),
    "combine_adam": ("triton", "cuda"),
    "sign_conflict": ("triton", "cuda"),
    # The aggregators: the Triton kernels where they exist (PCGrad, CAGrad, Nash-MTL; one launch,
    # no host sync), the reference otherwise.
    "pcgrad": ("triton",),
    "imtlg": ("triton",),
    "cagrad": ("triton",),
    "nash_mtl": ("triton",),
    "aligned_mtl": ("triton",),
    "config": ("triton",),
    # One program per (problem, row) with G̃ in registers, T ≤ 64; above, the sync-free
    # reference (batched Cholesky) runs unchanged on the GPU.
    "dual_cone": ("triton",),
}
# Preference of "auto" on the CPU, per op (the reference otherwise): the compiled solver gives
# the reference's weights 6x (1024 problems of T = 8) to 400x (one of T = 10) faster, measured
# on one thread (mtl_fast/kernels/cpu); the compiled Gram is 5-10x faster than torch.mm for
# T = 10 rows of 11.2 M (53 against 300-540 ms) and the combination on par with torch.bmm
# (mtl_fast/kernels/cpu/dense.py). For dual_cone (UPGrad, DualProj) the compiled solver gives the
# reference's weights 5-50x faster through upgrad_weights at every T measured, 2 to 128 (one
# thread; docs/upgrad.md). The aggregators likewise: one problem of T = 10 takes 36-135 µs
# through the public functions on the library against 0.24-3.0 ms on the reference (thread CPU
# time, docs/aggregators.md).
CPU_AUTO_PREFERENCE: dict[str, tuple[str, ...]] = {
    "min_norm": ("cpu",),
    "dual_cone": ("cpu",),
    "gram": ("cpu",),
    "combine": ("cpu",),
    "pcgrad": ("cpu",),
    "imtlg": ("cpu",),
    "cagrad": ("cpu",),
    "nash_mtl": ("cpu",),
    "aligned_mtl": ("cpu",),
    "config": ("cpu",),
}


def op_functions(package: str, ops: Iterable[str]) -> dict[str, Callable[..., Any]]:
    """The function of each op of ``ops`` in the backend package ``package``: the one named after
    the op in the file of the package that ``OP_FILES`` names (imported here if need be)."""
    return {op: getattr(importlib.import_module(f"{package}.{OP_FILES[op]}"), op) for op in ops}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the op here; the message says why."""


@dataclass(frozen=True)
class BackendStatus:
    """What :func:`mtl_fast.backends` reports for one backend."""

    name: str
    available: bool
    reason: str | None
    ops: tuple[str, ...]


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _constant_under_compile(fn: _Fn) -> _Fn:
    """Mark ``fn`` as ``torch.compiler.assume_constant_result`` does: dynamo calls it as plain
    Python and uses its result as a constant. That function sets this very attribute, but first
    imports torch._dynamo, 2-3 s (measured) that a program which never compiles would pay on
    ``import mtl_fast``; tests/test_dispatch.py checks that dynamo still honours it."""
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


_loaded: dict[str, ModuleType | str] = {}
# Implementations resolved while torch.compile traced, as attributes "backend:op" (see resolve).
_traced = SimpleNamespace()


def _load(name: str) -> ModuleType | str:
    """The backend module, or the reason it cannot be used (cached)."""
    if name not in _loaded:
        try:
            module = importlib.import_module(_MODULES[name])
        except ImportError as exc:  # a backend package that is not in this install
            _loaded[name] = f"{_MODULES[name]} could not be imported: {exc}"
        else:
            reason = module.unavailable_reason()
            _loaded[name] = reason if reason is not None else module
    return _loaded[name]


def _reset_cache() -> None:
    """Forget what was loaded (tests use this after changing the environment)."""
    _loaded.clear()
    _traced.__dict__.clear()


def backends() -> dict[str, BackendStatus]:
    """Which backends exist on this machine and, for each missing one, why.

    Example:
        >>> import mtl_fast
        >>> mtl_fast.backends()["reference"].available
        True
    """
    out: dict[str, BackendStatus] = {}
    for name in BACKEND_NAMES:
        loaded = _load(name)
        if isinstance(loaded, str):
            out[name] = BackendStatus(name, False, loaded, ())
        else:
            out[name] = BackendStatus(name, True, None, tuple(sorted(loaded.OPS)))
    return out


def default_backend() -> str:
    value = os.environ.get("MTL_FAST_BACKEND", "auto").strip().lower() or "auto"
    if value != "auto" and value not in BACKEND_NAMES:
        raise ValueError(
            f"MTL_FAST_BACKEND={value!r} is not one of 'auto', {', '.join(map(repr, BACKEND_NAMES))}"
        )
    return value


def _task_limit_reason(module: ModuleType, op: str, tasks: int | None) -> str | None:
    limit = getattr(module, "TASK_LIMITS", {}).get(op)
    if tasks is not None and limit is not None and tasks > limit:
        return f"it supports T ≤ {limit} tasks, got T={tasks}"
    return None


def _explicit(
    op: str, name: str, device: torch.device, tasks: int | None = None
) -> Callable[..., Any]:
    loaded = _load(name)
    if isinstance(loaded, str):
        raise BackendUnavailableError(f"backend={name!r} cannot run {op}: {loaded}")
    if op not in loaded.OPS:
        raise BackendUnavailableError(
            f"backend={name!r} has no implementation of {op} "
            f"(it implements: {', '.join(sorted(loaded.OPS)) or 'nothing'})"
        )
    reason = loaded.device_reason(device)
    if reason is not None:
        raise BackendUnavailableError(f"backend={name!r} cannot run {op} on {device}: {reason}")
    reason = _task_limit_reason(loaded, op, tasks)
    if reason is not None:
        raise BackendUnavailableError(f"backend={name!r} cannot run {op}: {reason}")
    fn: Callable[..., Any] = getattr(loaded, op)
    return fn


def resolve_name(
    op: str, backend: str | None, device: torch.device, tasks: int | None = None
) -> str:
    """The backend name that will run ``op`` on ``device`` (for T = ``tasks`` when given)."""
    requested = default_backend() if backend is None else backend
    if requested == "auto":
        if device.type in ("cuda", "cpu"):
            preference = AUTO_PREFERENCE if device.type == "cuda" else CPU_AUTO_PREFERENCE
            for name in preference.get(op, ()):
                loaded = _load(name)
                if (
                    not isinstance(loaded, str)
                    and op in loaded.OPS
                    and loaded.device_reason(device) is None
                    and _task_limit_reason(loaded, op, tasks) is None
                ):
                    return name
        return "reference"
    if requested not in BACKEND_NAMES:
        raise ValueError(
            f"backend must be 'auto' or one of {', '.join(map(repr, BACKEND_NAMES))}, "
            f"got {requested!r}"
        )
    _explicit(op, requested, device, tasks)
    return requested


def resolve(
    op: str, backend: str | None, device: torch.device, tasks: int | None = None
) -> Callable[..., Any]:
    """The implementation of ``op`` for ``device``; raises if an explicit backend cannot run it."""
    if torch.compiler.is_compiling():
        impl: Callable[..., Any] = getattr(_traced, _resolve_untraced(op, backend, device, tasks))
        return impl
    name = resolve_name(op, backend, device, tasks)
    return _explicit(op, name, device, tasks)


@_constant_under_compile
def _resolve_untraced(op: str, backend: str | None, device: torch.device, tasks: int | None) -> str:
    """Under torch.compile: resolve as plain Python, store the implementation in ``_traced`` and
    return its attribute name. Resolving imports and loads backends (importlib, ctypes), which
    dynamo cannot trace, and dynamo would read ``_loaded`` as it was when the trace first read
    it, before this loaded a backend; a namespace attribute it reads as it is now."""
    name = resolve_name(op, backend, device, tasks)
    key = f"{name}:{op}"
    setattr(_traced, key, _explicit(op, name, device, tasks))
    return key
