"""sign_conflict on every backend that implements it: exact counts of opposite-sign coordinates.

The public function is :func:`mtl_fast.diagnostics.sign_conflict` (tests/test_diagnostics.py);
here each backend's op is compared with the reference bit for bit and with a direct count.
"""

from __future__ import annotations

import torch

from mtl_fast.kernels import reference as ref
from tests.backends import for_backends, for_batched_shapes
from tests.helpers import BF16, FP32, FP64

SHAPES = [(1, 1, 1), (1, 2, 7), (2, 5, 4099), (1, 33, 1025), (1, 70, 300)]
# One host thread per CUDA thread: the emulator's SM-count plans are the test below.
SHAPES_EMULATED = [(1, 1, 1), (2, 5, 4099), (1, 33, 1025)]


def sample(B: int, T: int, P: int, dtype: torch.dtype, tiny: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(T + P)
    J = torch.randn(B, T, P, generator=gen)
    J[torch.rand(B, T, P, generator=gen) < 0.2] = 0.0  # zeros never conflict
    if dtype == FP64:
        J = J.double()
        J[..., :tiny] = 1e-300 * torch.sign(J[..., :tiny])  # signs of values fp32 would flush
    return J.to(dtype)


def direct_count(J: torch.Tensor) -> torch.Tensor:
    s = torch.sign(J.double())
    return (s.unsqueeze(-2) * s.unsqueeze(-3) < 0).double().mean(-1)


@for_batched_shapes("sign_conflict", SHAPES, SHAPES_EMULATED)
def test_sign_conflict_counts_exactly_like_the_reference(backend, dtype, B, T, P) -> None:
    J = sample(B, T, P, dtype, tiny=3)
    C = backend.op("sign_conflict")(backend.to(J)).cpu()
    assert C.dtype == FP64 and C.shape == (B, T, T)
    assert torch.equal(C, ref.sign_conflict(J))  # exact counts, divided by P in fp64
    assert (C - direct_count(J)).abs().max().item() <= 1e-12
    assert torch.equal(C, C.transpose(-1, -2)) and not C.diagonal(dim1=-2, dim2=-1).any()


@for_backends(
    "sign_conflict",
    "dtype, B, T, P, sms",
    [(d, 1, 1, 1, 4) for d in (FP32, FP64, BF16)]
    + [(d, 2, 5, 4099, 16) for d in (FP32, FP64, BF16)]
    + [(d, 1, 33, 1025, 4) for d in (FP32, FP64, BF16)],
    only=["cuda-emulated"],
)
def test_emulated_sign_conflict_chunk_plans(backend, dtype, B, T, P, sms) -> None:
    """cuda-emulated only: the counts are exact whatever the plan (1 SM up to 3·16 + 1)."""
    J = sample(B, T, P, dtype, tiny=2)
    for plan in (sms, 1, 3 * sms + 1):
        C = backend.module.gram_planned(J, plan, sign=True)
        assert torch.equal(C, ref.sign_conflict(J)), plan
