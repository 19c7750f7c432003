"""Combine d = Σ_t w_t J_t per backend vs ``w @ J``."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from bench_common import DEVICE, GRID, PROVIDERS, bench_provider, cached_case

from mtl_fast.tools.bench import combine_case

SHAPES = list(itertools.product(GRID.dtypes, GRID.Ts, GRID.Ps))


@pytest.mark.parametrize("provider", [*PROVIDERS, "w @ J"])
@pytest.mark.parametrize(("dtype", "T", "P"), SHAPES, ids=lambda x: str(x).replace("torch.", ""))
def test_combine(benchmark: Any, dtype: Any, T: int, P: int, provider: str) -> None:
    case = cached_case(("combine", dtype, T, P), lambda: combine_case(T, P, dtype, DEVICE))
    bench_provider(benchmark, case, provider)
