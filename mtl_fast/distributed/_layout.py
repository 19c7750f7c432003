"""How the flat (P,) parameter axis is split into W equal column shards, one per rank."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ShardLayout:
    """P columns in W shards of ``shard = ceil(P / W)`` columns each; rank r owns columns
    [r·shard, min(P, (r+1)·shard)). The last shards are padded with zeros to ``shard`` columns
    so that every rank sends and receives equal chunks (what reduce-scatter and all-gather need).

    Args:
        numel: P ≥ 1.
        world: W ≥ 1.
    """

    numel: int
    world: int

    def __post_init__(self) -> None:
        if self.numel < 1:
            raise ValueError(f"numel must be ≥ 1, got {self.numel}")
        if self.world < 1:
            raise ValueError(f"world must be ≥ 1, got {self.world}")

    @property
    def shard(self) -> int:
        """Columns per shard (padding included)."""
        return -(-self.numel // self.world)

    @property
    def padded(self) -> int:
        """W · shard ≥ P."""
        return self.shard * self.world

    def bounds(self, rank: int) -> tuple[int, int]:
        """[start, stop) of rank's real columns (stop − start may be < shard, or 0)."""
        start = min(self.numel, rank * self.shard)
        return start, min(self.numel, start + self.shard)

    def pack(self, J: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Write the (T, P) ``J`` into ``out`` (W, T, shard) shard-major: out[r] holds rank r's
        columns, zero-padded. One copy of J (the collectives send contiguous chunks)."""
        T = J.shape[0]
        if J.dim() != 2 or J.shape[1] != self.numel:
            raise ValueError(f"J must have shape (T, {self.numel}), got {tuple(J.shape)}")
        if tuple(out.shape) != (self.world, T, self.shard):
            raise ValueError(
                f"out must have shape ({self.world}, {T}, {self.shard}), got {tuple(out.shape)}"
            )
        if self.padded == self.numel:
            out.copy_(J.view(T, self.world, self.shard).transpose(0, 1))
            return out
        for r in range(self.world):
            a, b = self.bounds(r)
            out[r, :, : b - a].copy_(J[:, a:b])
            out[r, :, b - a :].zero_()
        return out
