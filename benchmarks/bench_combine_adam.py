"""Fused combine + single-state Adam per backend vs ``w @ J`` and one torch Adam step."""

from __future__ import annotations

from bench_common import GRID, dense_suite

from mtl_fast.tools.bench import combine_adam_case

test_combine_adam = dense_suite(
    "combine_adam", combine_adam_case, "w @ J + torch Adam", GRID.adam_Ts
)
