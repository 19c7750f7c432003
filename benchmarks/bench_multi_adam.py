"""Multi-state Adam (one step over all T tasks) per backend vs one torch Adam per task."""

from __future__ import annotations

from bench_common import GRID, dense_suite

from mtl_fast.tools.bench import multi_adam_case

test_multi_adam = dense_suite("multi_adam", multi_adam_case, "torch Adam ×T", GRID.adam_Ts)
