"""Fused combine + single-state Adam per backend vs ``w @ J`` and one torch Adam step."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from bench_common import DEVICE, GRID, PROVIDERS, bench_provider, cached_case

from mtl_fast.tools.bench import combine_adam_case

SHAPES = list(itertools.product(GRID.dtypes, GRID.adam_Ts, GRID.Ps))


@pytest.mark.parametrize("provider", [*PROVIDERS, "w @ J + torch Adam"])
@pytest.mark.parametrize(("dtype", "T", "P"), SHAPES, ids=lambda x: str(x).replace("torch.", ""))
def test_combine_adam(benchmark: Any, dtype: Any, T: int, P: int, provider: str) -> None:
    case = cached_case(
        ("combine_adam", dtype, T, P), lambda: combine_adam_case(T, P, dtype, DEVICE)
    )
    bench_provider(benchmark, case, provider)
