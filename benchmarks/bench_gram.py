"""Gram K = J Jᵀ per backend vs ``torch.mm(J, J.T)``."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from bench_common import DEVICE, GRID, PROVIDERS, bench_provider, cached_case

from mtl_fast.tools.bench import gram_case

SHAPES = list(itertools.product(GRID.dtypes, GRID.Ts, GRID.Ps))


@pytest.mark.parametrize("provider", [*PROVIDERS, "torch.mm"])
@pytest.mark.parametrize(("dtype", "T", "P"), SHAPES, ids=lambda x: str(x).replace("torch.", ""))
def test_gram(benchmark: Any, dtype: Any, T: int, P: int, provider: str) -> None:
    case = cached_case(("gram", dtype, T, P), lambda: gram_case(T, P, dtype, DEVICE))
    bench_provider(benchmark, case, provider)
