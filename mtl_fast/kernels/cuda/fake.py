"""Fake (meta) implementations of the extension's ops, so that torch.compile can trace them.

They give only the output's shape, dtype and device; the in-place optimizer ops return nothing
(their schemas mark the mutated arguments, so torch.compile functionalizes them).
"""

from __future__ import annotations

import torch

from mtl_fast._core.precision import accumulation_dtype as _acc

NAMESPACE = "mtl_fast_cuda"
_registered = False


def register() -> None:
    """Register every fake once per process (the library must already be loaded)."""
    global _registered
    if _registered:
        return

    @torch.library.register_fake(f"{NAMESPACE}::gram")
    def _gram(J: torch.Tensor) -> torch.Tensor:
        torch._check(J.dim() == 3, lambda: f"J must have shape (B, T, P), got {tuple(J.shape)}")
        return J.new_empty((J.shape[0], J.shape[1], J.shape[1]), dtype=_acc(J.dtype))

    @torch.library.register_fake(f"{NAMESPACE}::gram_list")
    def _gram_list(grads: list[torch.Tensor]) -> torch.Tensor:
        torch._check(len(grads) > 0, lambda: "grads must hold at least one (T, n) tensor")
        T = grads[0].shape[0]
        return grads[0].new_empty((T, T), dtype=_acc(grads[0].dtype))

    @torch.library.register_fake(f"{NAMESPACE}::sign_conflict")
    def _sign_conflict(J: torch.Tensor) -> torch.Tensor:
        torch._check(J.dim() == 3, lambda: f"J must have shape (B, T, P), got {tuple(J.shape)}")
        return J.new_empty((J.shape[0], J.shape[1], J.shape[1]), dtype=torch.float64)

    @torch.library.register_fake(f"{NAMESPACE}::min_norm")
    def _min_norm(K: torch.Tensor, max_iter: int, tol: float) -> torch.Tensor:
        torch._check(K.dim() == 3, lambda: f"K must have shape (B, T, T), got {tuple(K.shape)}")
        return K.new_empty((K.shape[0], K.shape[1]))

    @torch.library.register_fake(f"{NAMESPACE}::combine")
    def _combine(J: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        torch._check(J.dim() == 3, lambda: f"J must have shape (B, T, P), got {tuple(J.shape)}")
        return J.new_empty((J.shape[0], J.shape[2]))

    def _in_place(*args: object) -> None:  # the optimizer ops: the schema marks what they update
        return None

    for op in ("multi_adam", "combine_adam"):
        torch.library.register_fake(f"{NAMESPACE}::{op}")(_in_place)

    _registered = True
