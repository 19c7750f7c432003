"""Which backends the op tests run on here, and how a test is parametrized over them.

Every property in ``tests/ops/`` is written once and runs on each backend that implements the op:

- ``reference``: the pure-PyTorch references, on ``MTL_FAST_TEST_DEVICE`` (default cpu);
- ``cpu``: the compiled CPU library (``csrc/cpu``), on CPU tensors; skipped with the reason when
  it is not built;
- ``triton``: under Triton's interpreter on the CPU (``conftest`` sets TRITON_INTERPRET=1 when no
  CUDA device is visible), compiled on a GPU;
- ``cuda``: the compiled extension, on a CUDA device only (skipped with the reason elsewhere);
- ``cuda-emulated``: the extension's device code compiled for the host against the CUDA emulator
  (``tests/emulated_cuda.py``), on CPU tensors. It needs g++ and is skipped in a GPU run, where the
  compiled extension itself is tested (``MTL_FAST_TEST_EMULATOR=1`` runs it there too).

A backend belongs to a tier that picks its case list: ``full`` (reference, compiled Triton,
CUDA), ``interpreter`` (Triton interpreted: it pays per operation) and ``emulator`` (one host
thread per CUDA thread). A test gives the full list and, where a slow tier needs them, smaller
ones; the big cases then run on the reference and on a GPU.

Usage::

    @for_backends("gram", "dtype, T, P", FULL_CASES, interpreter=FEWER, emulator=FEWEST)
    def test_gram_matches_fp64(backend, dtype, T, P): ...

    @for_backends("combine")
    def test_combine_is_linear(backend): ...

``backend`` (a fixture, see ``conftest``) is a :class:`Backend`: ``backend.op("gram")`` is the
backend's function in the calling convention of :mod:`mtl_fast._core.contracts`, and
``backend.dispatch`` is the name the public ops take as ``backend=`` (the emulator is registered
with the dispatch for the duration of a test). Test ids read
``test_gram_matches_fp64[triton-float32-T5-P1000]``. A backend that cannot run here gets one
skipped parameter per test (``[cuda]``), with its reason.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from mtl_fast._core import dispatch as _dispatch

DEVICE = torch.device(os.environ.get("MTL_FAST_TEST_DEVICE", "cpu"))
ON_GPU = DEVICE.type == "cuda"

gpu = pytest.mark.gpu
requires_gpu = pytest.mark.skipif(
    not (ON_GPU and torch.cuda.is_available()),
    reason="needs MTL_FAST_TEST_DEVICE=cuda and a CUDA device",
)


@dataclass(frozen=True)
class BackendInfo:
    """What is known about a backend at collection time."""

    name: str
    ops: frozenset[str]
    tier: str  # "full", "interpreter" or "emulator"
    device: torch.device
    reason: str | None  # why it cannot run here; None: it runs
    gpu_only: bool = False
    task_limits: dict[str, int] = field(default_factory=dict)

    @property
    def marks(self) -> list[pytest.MarkDecorator]:
        marks = [pytest.mark.gpu] if self.gpu_only else []
        if self.reason is not None:
            marks.append(pytest.mark.skip(reason=f"{self.name}: {self.reason}"))
        return marks


@dataclass(frozen=True)
class Backend:
    """A backend a test runs on."""

    info: BackendInfo
    module: ModuleType
    dispatch: str  # the ``backend=`` name of the public ops

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def is_reference(self) -> bool:
        return self.info.name == "reference"

    @property
    def is_kernel(self) -> bool:
        """Compiled CPU, Triton, CUDA or emulated CUDA: one fused kernel (on a GPU it never reads
        back to the host)."""
        return self.info.name != "reference"

    @property
    def tier(self) -> str:
        return self.info.tier

    @property
    def sync_free(self) -> bool:
        """The ``sync_free`` the op tests pass to min_norm. The kernels ignore it (they never read
        back); the reference stops early (False) even on a GPU, where its masked form would run
        the whole budget of every solve: that form has its own tests in test_min_norm.py."""
        return False

    def op(self, name: str) -> Callable[..., Any]:
        """The backend's function for op ``name``, in the contract's calling convention."""
        fn: Callable[..., Any] = getattr(self.module, name)
        return fn

    def to(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on this backend's device."""
        return x.to(self.device)


def _dispatch_reason(name: str, device: torch.device) -> str | None:
    loaded = _dispatch._load(name)
    if isinstance(loaded, str):
        return loaded
    return loaded.device_reason(device)


def _reference() -> BackendInfo:
    module = importlib.import_module("mtl_fast.kernels.reference")
    return BackendInfo("reference", module.OPS, "full", DEVICE, None)


def _cpu() -> BackendInfo:
    module = importlib.import_module("mtl_fast.kernels.cpu")
    cpu = torch.device("cpu")
    reason = _dispatch_reason("cpu", cpu)
    return BackendInfo("cpu", module.OPS, "full", cpu, reason, False, module.TASK_LIMITS)


def _triton() -> BackendInfo:
    module = importlib.import_module("mtl_fast.kernels.triton")
    reason = _dispatch_reason("triton", DEVICE)
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if reason is None:
        from mtl_fast.kernels.triton.common import INTERPRETED as interpreted
    tier = "interpreter" if interpreted else "full"
    return BackendInfo("triton", module.OPS, tier, DEVICE, reason, False, module.TASK_LIMITS)


def _cuda() -> BackendInfo:
    module = importlib.import_module("mtl_fast.kernels.cuda")
    device = DEVICE if DEVICE.type == "cuda" else torch.device("cuda")
    if not torch.cuda.is_available():
        reason: str | None = "needs a CUDA device (none visible on this machine)"
    else:
        reason = _dispatch_reason("cuda", device)
    return BackendInfo("cuda", module.OPS, "full", device, reason, True, module.TASK_LIMITS)


def _emulated() -> BackendInfo:
    from tests import emulated_cuda

    reason = emulated_cuda.compiler_reason()
    if reason is None and ON_GPU and os.environ.get("MTL_FAST_TEST_EMULATOR", "0") in ("", "0"):
        reason = (
            "the GPU run tests the compiled extension instead (set MTL_FAST_TEST_EMULATOR=1 to "
            "run the emulated device code on the CPU here too)"
        )
    cpu = torch.device("cpu")
    ops, limits = emulated_cuda.OPS, emulated_cuda.TASK_LIMITS
    return BackendInfo("cuda-emulated", ops, "emulator", cpu, reason, False, limits)


@functools.cache
def backend_infos() -> dict[str, BackendInfo]:
    """Every backend by name (made at collection, after ``conftest`` has set TRITON_INTERPRET)."""
    return {b.name: b for b in (_reference(), _cpu(), _triton(), _cuda(), _emulated())}


# ------------------------------------------------------------------------ parametrization


def _id(name: str, value: Any) -> str:
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, bool):
        return name if value else f"no_{name}"
    if isinstance(value, int):
        return f"{name}{value}"
    if isinstance(value, float):
        return f"{name}={value:g}"
    return str(value)


def for_backends(
    op: str,
    argnames: str = "",
    cases: Sequence[Any] = (),
    *,
    interpreter: Sequence[Any] | None = None,
    emulator: Sequence[Any] | None = None,
    only: Iterable[str] | None = None,
    ids: Callable[[tuple[Any, ...]], str] | None = None,
) -> pytest.MarkDecorator:
    """Parametrize a test over (backend, *case) for every backend that implements ``op``.

    Args:
        op: the op (a key of :data:`mtl_fast._core.contracts.CONTRACTS`).
        argnames: comma-separated names of the case values, e.g. ``"dtype, T, P"``.
        cases: the case list of the full tier (a tuple per case, or a bare value for one name).
        interpreter, emulator: the case lists of the slow tiers (default: ``cases``).
        only: restrict to these backends (backend-specific properties).
        ids: the id of a case (default: the values joined with ``-``: ``float32-T5-P1000``).

    A case whose ``T`` exceeds the backend's ``TASK_LIMITS[op]`` is left out (the limit has its
    own backend-specific test).
    """
    names = [n.strip() for n in argnames.split(",") if n.strip()]
    wanted = set(only) if only is not None else None
    params = []
    for info in backend_infos().values():
        if op not in info.ops or (wanted is not None and info.name not in wanted):
            continue
        tier_cases = {"interpreter": interpreter, "emulator": emulator}.get(info.tier)
        chosen = list(cases if tier_cases is None else tier_cases) if names else [()]
        normalized = [c if isinstance(c, tuple) else (c,) for c in chosen]
        limit = info.task_limits.get(op)
        if limit is not None and "T" in names:
            normalized = [c for c in normalized if c[names.index("T")] <= limit]
        if info.reason is not None:  # one skipped parameter, not one per case
            normalized = normalized[:1]
        for case in normalized:
            if info.reason is not None:
                case_id = info.name
            elif ids is not None:
                case_id = f"{info.name}-{ids(case)}"
            else:
                case_id = "-".join([info.name, *(_id(n, v) for n, v in zip(names, case))])
            params.append(pytest.param(info.name, *case, id=case_id, marks=info.marks))
    return pytest.mark.parametrize(["backend_name", *names], params)


def make_backend(name: str, request: pytest.FixtureRequest) -> Backend:
    """The :class:`Backend` of ``name`` for one test (the ``backend`` fixture)."""
    info = backend_infos()[name]
    if info.reason is not None:
        pytest.skip(f"{name}: {info.reason}")
    if name == "cuda-emulated":
        module = request.getfixturevalue("emulated_cuda")
        monkeypatch = request.getfixturevalue("monkeypatch")
        # The public ops and MultiAdam reach it through the dispatch, like any backend.
        monkeypatch.setattr(_dispatch, "BACKEND_NAMES", (*_dispatch.BACKEND_NAMES, name))
        monkeypatch.setitem(_dispatch._loaded, name, module)
        return Backend(info, module, name)
    return Backend(info, _module(name), name)


@functools.cache
def _module(name: str) -> ModuleType:
    return importlib.import_module(f"mtl_fast.kernels.{name}")


# -- the compiled CPU library ------------------------------------------------------------------


@contextlib.contextmanager
def cpu_library_at(monkeypatch: pytest.MonkeyPatch, path: Path | None) -> Iterator[None]:
    """The CPU backend's loader pointed at ``path`` (None: no library next to the package) for
    the block: its cached libraries and the dispatch cache cleared on entry and on exit, where
    ``monkeypatch`` is undone."""
    from mtl_fast.kernels.cpu import loader

    def clear() -> None:
        loader.library.cache_clear()
        loader.dual_cone_library.cache_clear()
        _dispatch._reset_cache()

    monkeypatch.setattr(loader, "library_path", lambda: path)
    clear()
    try:
        yield
    finally:
        monkeypatch.undo()
        clear()


def assert_abi_version(header: str, macro: str, symbol: str, version: int) -> None:
    """``csrc/cpu/<header>`` defines ``macro`` as ``version``, and the built library (when there
    is one) reports the same through ``symbol``."""
    from mtl_fast.kernels import cpu

    text = (Path(__file__).resolve().parents[1] / "csrc" / "cpu" / header).read_text()
    assert f"#define {macro} {version}\n" in text
    path = cpu.library_path()
    if path is not None:
        assert getattr(ctypes.CDLL(str(path)), symbol)() == version


def assert_one_graph(
    step: Callable[[torch.Tensor], torch.Tensor],
    J: torch.Tensor,
    expected: torch.Tensor,
    op: str,
    compiler: str = "aot_eager",
) -> None:
    """``step`` under ``torch.compile(fullgraph=True)`` gives ``expected`` on ``J``, and traces
    to one graph, without a break, that calls the custom op ``op``."""
    torch._dynamo.reset()
    try:
        compiled = torch.compile(step, fullgraph=True, backend=compiler)
        torch.testing.assert_close(compiled(J), expected)
        explained = torch._dynamo.explain(step)(J)
        assert explained.graph_break_count == 0
        assert op in explained.graphs[0].code
    finally:
        torch._dynamo.reset()


def for_batched_shapes(
    op: str, shapes: Sequence[tuple[int, int, int]], emulator: Sequence[tuple[int, int, int]]
) -> pytest.MarkDecorator:
    """:func:`for_backends` over ``dtype, B, T, P``: every dtype of the suite with every
    (B, T, P) of ``shapes`` (of ``emulator`` on the emulator tier)."""
    from tests.helpers import every_dtype

    return for_backends(
        op, "dtype, B, T, P", every_dtype(list(shapes)), emulator=every_dtype(list(emulator))
    )
