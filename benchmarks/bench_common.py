"""pytest-benchmark suites over every op and strategy, built on ``mtl_fast.tools.bench`` (the same
cases and byte formulas as ``mtl-fast bench``).

Run: ``pytest benchmarks/ --benchmark-json=out.json`` (the ``bench`` extra installs
pytest-benchmark). ``MTL_FAST_BENCH_DEVICE`` picks the device (default: cuda if visible, else
cpu) and ``MTL_FAST_BENCH_SIZE`` the shapes: ``quick`` (the default on a CPU) or ``full``.
Every record's ``extra_info`` holds the op, shape, dtype, device, bytes moved and achieved GB/s.
Backends that cannot run on the device are skipped with their reason.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch

from mtl_fast.tools.bench import OpCase, default_config
from mtl_fast.tools.bench._device import device_name

DEVICE = torch.device(
    os.environ.get("MTL_FAST_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
)
QUICK = os.environ.get("MTL_FAST_BENCH_SIZE", "quick" if DEVICE.type == "cpu" else "full") != "full"
CONFIG = default_config(DEVICE, QUICK)
GRID = CONFIG.grid
PROVIDERS = ("reference", "triton", "cuda")

_cache: dict[tuple[Any, ...], OpCase] = {}


def cached_case(key: tuple[Any, ...], build: Callable[[], OpCase]) -> OpCase:
    """The case for ``key``, keeping only the latest one alive (cases hold large tensors)."""
    if key not in _cache:
        _cache.clear()
        _cache[key] = build()
    return _cache[key]


def _synced(fn: Callable[[], object]) -> Callable[[], object]:
    if DEVICE.type != "cuda":
        return fn

    def run() -> object:
        out = fn()
        torch.cuda.synchronize(DEVICE)
        return out

    return run


def bench_provider(benchmark: Any, case: OpCase, provider: str, *, slow: bool = False) -> None:
    """Benchmark one provider of ``case`` and record bytes and GB/s in ``extra_info``."""
    if provider in case.skipped:
        pytest.skip(case.skipped[provider])
    if provider not in case.providers:
        pytest.skip(f"{provider} is not a provider of {case.op}")
    fn = _synced(case.providers[provider])
    benchmark.group = f"{case.op} {case.shape} {case.dtype}"
    benchmark.extra_info.update(
        {
            "op": case.op,
            "provider": provider,
            "shape": case.shape,
            "dtype": str(case.dtype),
            "device": device_name(DEVICE),
            "bytes": case.bytes_moved,
            "baseline": case.baseline,
        }
    )
    if slow:
        benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    else:
        benchmark(fn)
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.median > 0:
        median = stats.stats.median * case.time_scale.get(provider, 1.0)
        benchmark.extra_info["median_s"] = median
        if case.problems is not None:
            benchmark.extra_info["problems_per_s"] = case.problems / median
        else:
            benchmark.extra_info["bandwidth_GBps"] = case.bytes_moved / median / 1e9


def dense_suite(
    op: str,
    build: Callable[[int, int, Any, torch.device], OpCase],
    baseline: str,
    Ts: Sequence[int],
) -> Callable[..., None]:
    """The benchmark of a (T, P) op over ``GRID``'s dtypes, ``Ts`` and Ps: each backend and the
    ``baseline`` provider, on the case ``build(T, P, dtype, DEVICE)``."""
    shapes = list(itertools.product(GRID.dtypes, Ts, GRID.Ps))

    @pytest.mark.parametrize("provider", [*PROVIDERS, baseline])
    @pytest.mark.parametrize(
        ("dtype", "T", "P"), shapes, ids=lambda x: str(x).replace("torch.", "")
    )
    def suite(benchmark: Any, dtype: Any, T: int, P: int, provider: str) -> None:
        case = cached_case((op, dtype, T, P), lambda: build(T, P, dtype, DEVICE))
        bench_provider(benchmark, case, provider)

    return suite
