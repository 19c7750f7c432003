"""Gram K = J Jᵀ per backend vs ``torch.mm(J, J.T)``."""

from __future__ import annotations

from bench_common import GRID, dense_suite

from mtl_fast.tools.bench import gram_case

test_gram = dense_suite("gram", gram_case, "torch.mm", GRID.Ts)
