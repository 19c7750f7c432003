"""Combine d = Σ_t w_t J_t per backend vs ``w @ J``."""

from __future__ import annotations

from bench_common import GRID, dense_suite

from mtl_fast.tools.bench import combine_case

test_combine = dense_suite("combine", combine_case, "w @ J", GRID.Ts)
