"""Batched min-norm (MGDA) solve per backend vs the published Python-loop solver, problem by
problem (``mtl_fast.tools.bench.mgda_loop``; timed once, on a subset of the batch when the grid says
so, and scaled to the whole batch in ``extra_info``)."""

from __future__ import annotations

from typing import Any

import pytest
from bench_common import DEVICE, GRID, PROVIDERS, bench_provider, cached_case

from mtl_fast.tools.bench import min_norm_case


@pytest.mark.parametrize("provider", [*PROVIDERS, "python-loop"])
@pytest.mark.parametrize(("B", "T"), GRID.solver)
def test_min_norm(benchmark: Any, B: int, T: int, provider: str) -> None:
    case = cached_case(
        ("min_norm", B, T),
        lambda: min_norm_case(B, T, DEVICE, loop_problems=GRID.loop_problems),
    )
    bench_provider(benchmark, case, provider, slow=provider == "python-loop")
