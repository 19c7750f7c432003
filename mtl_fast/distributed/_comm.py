"""Collectives over one process group, each one counted (payload and bytes sent per rank)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

REDUCE_SCATTER = ("auto", "native", "all_to_all", "all_reduce")
# torch ≥ 2.14 renames the tensor forms; the old names warn there.
_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class CommRecord:
    """One collective as issued: ``op``, the payload (bytes of the tensor handed to it: the input
    of a reduce-scatter, the output of an all-gather) and the bytes each rank sends over the
    wire with the bandwidth-optimal algorithm of that collective (docs/distributed.md)."""

    op: str
    payload_bytes: int
    sent_bytes: int


@dataclass
class CommLog:
    """Every collective a :class:`Communicator` issued since the last :meth:`reset`."""

    records: list[CommRecord] = field(default_factory=list)

    def reset(self) -> None:
        self.records.clear()

    @property
    def sent_bytes(self) -> int:
        """Bytes each rank sent, summed over the collectives."""
        return sum(r.sent_bytes for r in self.records)

    @property
    def payload_bytes(self) -> int:
        return sum(r.payload_bytes for r in self.records)

    def by_op(self) -> dict[str, int]:
        """Bytes sent per rank, by collective."""
        out: dict[str, int] = {}
        for r in self.records:
            out[r.op] = out.get(r.op, 0) + r.sent_bytes
        return out


def sent_per_rank(op: str, payload_bytes: int, world: int) -> int:
    """Bytes one rank sends for a collective of ``payload_bytes`` among ``world`` ranks.

    Ring all-reduce: 2(W−1)/W of the buffer (a reduce-scatter then an all-gather); ring
    reduce-scatter and all-gather: (W−1)/W of the full (W-chunk) buffer; all-to-all: the W−1
    chunks that go to other ranks, (W−1)/W; broadcast (the root's view): the buffer once.
    """
    if world <= 1:
        return 0
    if op == "all_reduce":
        return 2 * (world - 1) * payload_bytes // world
    if op in ("reduce_scatter", "all_gather", "all_to_all"):
        return (world - 1) * payload_bytes // world
    if op == "broadcast":
        return payload_bytes
    raise ValueError(f"op must be a known collective, got {op!r}")


def _nbytes(x: torch.Tensor) -> int:
    return x.numel() * x.element_size()


class Communicator:
    """The collectives the distributed strategies issue, over ``group`` (default: the default
    process group), each one recorded in :attr:`log`.

    Args:
        group: a ``torch.distributed`` process group, or None for the default group (which
            must be initialised: ``torch.distributed.init_process_group``).
        reduce_scatter: how a reduce-scatter runs: "native" (``reduce_scatter_single``: NCCL,
            and gloo in torch ≥ 2.6), "all_to_all" (each rank sends chunk j to rank j and sums
            the W chunks it receives: the same bytes as a ring reduce-scatter), "all_reduce"
            (all-reduce the whole buffer and keep one's chunk: twice the bytes), or "auto"
            (native; should the backend refuse it, all-to-all from then on, recorded in
            :attr:`reduce_scatter_used`).

    Attributes:
        rank, world: this process's rank and the group's size.
        backend: the group's backend name ("gloo", "nccl", ...).
        log: a :class:`CommLog` of every collective issued.
        reduce_scatter_used: the method the last reduce-scatter used.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, *, reduce_scatter: str = "auto"):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "group: torch.distributed is not initialised; call "
                "torch.distributed.init_process_group first (or mtl_fast.distributed.init_from_env)"
            )
        if reduce_scatter not in REDUCE_SCATTER:
            raise ValueError(
                f"reduce_scatter must be one of {REDUCE_SCATTER}, got {reduce_scatter!r}"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        # Where control tensors (flags, losses, Gram matrices) live: NCCL reduces CUDA tensors.
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if self.backend == "nccl"
            else torch.device("cpu")
        )
        self.reduce_scatter_method = reduce_scatter
        self.reduce_scatter_used: str | None = None
        self.log = CommLog()

    def _record(self, op: str, payload: int) -> None:
        self.log.records.append(CommRecord(op, payload, sent_per_rank(op, payload, self.world)))

    def all_reduce(self, x: torch.Tensor, *, average: bool = False) -> torch.Tensor:
        """Sum (or mean) of ``x`` over the ranks, in place; returns x."""
        self._record("all_reduce", _nbytes(x))
        if self.world > 1:
            dist.all_reduce(x, group=self.group)
        if average and self.world > 1:
            x.div_(self.world)
        return x

    def all_reduce_max(self, x: torch.Tensor) -> torch.Tensor:
        """Element-wise maximum over the ranks, in place (tiny control values only)."""
        self._record("all_reduce", _nbytes(x))
        if self.world > 1:
            dist.all_reduce(x, op=dist.ReduceOp.MAX, group=self.group)
        return x

    def broadcast(self, x: torch.Tensor, src: int = 0) -> torch.Tensor:
        """Rank ``src``'s ``x`` on every rank (``src`` is a rank of the group), in place."""
        self._record("broadcast", _nbytes(x))
        if self.world > 1:
            root = src if self.group is None else dist.get_global_rank(self.group, src)
            dist.broadcast(x, root, group=self.group)
        return x

    def all_gather(self, out: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
        """``out`` (W·n,) = the ranks' ``chunk`` (n,) in rank order; returns out."""
        if out.numel() != self.world * chunk.numel():
            raise ValueError(
                f"out must have world × chunk = {self.world * chunk.numel()} elements, "
                f"got {out.numel()}"
            )
        self._record("all_gather", _nbytes(out))
        if self.world == 1:
            out.copy_(chunk.reshape(out.shape))
        else:
            _all_gather(out, chunk, group=self.group)
        return out

    def reduce_scatter(self, out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        """``out`` (n,) = Σ_ranks of chunk ``rank`` of ``inp`` (W·n,) (a sum, not a mean).

        See the class docstring for the methods; the bytes recorded are those of the method
        that ran (an all-reduce fallback is recorded as the all-reduce it is)."""
        if inp.numel() != self.world * out.numel():
            raise ValueError(
                f"inp must have world × out = {self.world * out.numel()} elements, "
                f"got {inp.numel()}"
            )
        if self.world == 1:
            self._record("reduce_scatter", _nbytes(inp))
            self.reduce_scatter_used = "native"
            return out.copy_(inp.reshape(out.shape))
        method = self.reduce_scatter_method
        if method in ("auto", "native"):
            try:
                _reduce_scatter(out, inp, group=self.group)
            except (RuntimeError, NotImplementedError, ValueError):
                if method == "native":
                    raise
                self.reduce_scatter_method = method = "all_to_all"
            else:
                self._record("reduce_scatter", _nbytes(inp))
                self.reduce_scatter_used = "native"
                return out
        if method == "all_to_all":
            recv = torch.empty_like(inp)
            dist.all_to_all_single(recv, inp.contiguous(), group=self.group)
            self._record("all_to_all", _nbytes(inp))
            torch.sum(recv.view(self.world, -1), dim=0, out=out.view(-1))
        else:
            buf = inp.clone()
            self.all_reduce(buf)
            out.copy_(buf.view(self.world, -1)[self.rank].view(out.shape))
        self.reduce_scatter_used = method
        return out

    def check_same(self, name: str, values: list[float]) -> None:
        """Raise ValueError naming ``name`` unless every rank passed the same ``values``."""
        v = torch.tensor(values, dtype=torch.float64, device=self.device)
        both = self.all_reduce_max(torch.cat([v, -v]))
        hi, lo = both[: len(values)], -both[len(values) :]
        if not torch.equal(hi.cpu(), lo.cpu()):
            raise ValueError(
                f"{name} differs between ranks (rank {self.rank} has {values}; the ranks span "
                f"{lo.tolist()} to {hi.tolist()}): every rank must take the same decisions"
            )
