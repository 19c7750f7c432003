"""Bytes each op must move at least (its physical minimum traffic), per docs/math.md.

Achieved bandwidth = these bytes / median time. Every provider of an op (a backend or a
baseline) is measured against the same formula, so a provider that moves more data than the
minimum (e.g. T separate Adam passes re-reading the parameters) shows a lower *effective*
bandwidth rather than an inflated one.
"""

from __future__ import annotations

import torch


def _size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """Adam moments are fp32 for fp16/bf16/fp32 parameters, fp64 for fp64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_bytes(B: int, T: int, P: int, dtype: torch.dtype) -> int:
    """Read J once (B·T·P elements), write K (B·T·T in the accumulation dtype)."""
    return B * T * P * _size(dtype) + B * T * T * _size(state_dtype(dtype))


def combine_bytes(B: int, T: int, P: int, dtype: torch.dtype) -> int:
    """Read J once and w, write d (B·P elements of J's dtype)."""
    return B * T * P * _size(dtype) + B * T * 4 + B * P * _size(dtype)


def min_norm_bytes(B: int, T: int, dtype: torch.dtype) -> int:
    """Read K, write w. The solve is compute/latency-bound: this is reported, not a yardstick."""
    return B * T * T * _size(dtype) + B * T * _size(dtype)


def multi_adam_bytes(S: int, P: int, dtype: torch.dtype) -> int:
    """One fused pass for |S| = ``S`` tasks: read p and S·(g, m, v), write p and S·(m, v).

    For fp32 this is (8 + 20·S)·P bytes (docs/math.md).
    """
    p = _size(dtype)
    s = _size(state_dtype(dtype))
    return P * (2 * p + S * (p + 4 * s))


def combine_adam_bytes(T: int, P: int, dtype: torch.dtype) -> int:
    """Read J (T·P in ``dtype``) and p, m, v; write p, m, v. The parameters and moments are
    fp32 (fp64 for fp64 J): (4T + 24)·P bytes for fp32 J, (2T + 24)·P for bf16."""
    j = _size(dtype)
    s = _size(state_dtype(dtype))
    return T * P * j + P * 6 * s
