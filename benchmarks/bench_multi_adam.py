"""Multi-state Adam (one step over all T tasks) per backend vs one torch Adam per task."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from bench_common import DEVICE, GRID, PROVIDERS, bench_provider, cached_case

from mtl_fast.tools.bench import multi_adam_case

SHAPES = list(itertools.product(GRID.dtypes, GRID.adam_Ts, GRID.Ps))


@pytest.mark.parametrize("provider", [*PROVIDERS, "torch Adam ×T"])
@pytest.mark.parametrize(("dtype", "T", "P"), SHAPES, ids=lambda x: str(x).replace("torch.", ""))
def test_multi_adam(benchmark: Any, dtype: Any, T: int, P: int, provider: str) -> None:
    case = cached_case(("multi_adam", dtype, T, P), lambda: multi_adam_case(T, P, dtype, DEVICE))
    bench_provider(benchmark, case, provider)
