"""The exact distributed step of a Gram-space method: MGDA, UPGrad, DualProj, any K → w."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from mtl_fast._core.options import spells
from mtl_fast.diagnostics import gradient_diagnostics
from mtl_fast.distributed._comm import Communicator
from mtl_fast.distributed._grads import all_reduce_grads, broadcast_parameters
from mtl_fast.distributed._layout import ShardLayout
from mtl_fast.distributed._module import check_module, no_sync
from mtl_fast.distributed._sharded_adam import ShardedAdam
from mtl_fast.distributed._weighting import Weighting
from mtl_fast.strategies import CombineStrategy, Strategy
from mtl_fast.strategies._base import check_losses, loss_vector
from mtl_fast.strategies._combine_base import loss_grads
from mtl_fast.strategies._options import BackendKwargs

if TYPE_CHECKING:
    from typing_extensions import Unpack

EXCHANGES = ("reduce_scatter", "all_reduce", "local_gram")


@spells(CombineStrategy.__init__, BackendKwargs)
class DistributedGramStrategy(CombineStrategy):
    """One data-parallel step of a Gram-space method, exact: the weights are those of the
    single-process method on the whole (concatenated) batch.

    Rank r holds the per-task gradients G_r (T, P) of its share of the batch; the step's are
    G = (1/W) Σ_r G_r and the method needs K = G Gᵀ. With ``exchange="reduce_scatter"``
    (default; docs/distributed.md):

    1. the T backward passes fill the local arena (under DDP's ``no_sync``, see :meth:`no_sync`);
    2. the arena is reduce-scattered over its columns: rank r receives G[:, shard r] (T, s);
    3. its partial Gram, with the losses, is all-reduced: (T² + T) values;
    4. every rank solves the same (T, T) problem: (w, c) = ``weighting(K, losses)``;
    5. the shard's direction d_r = Σ_t c_t G_t[shard r]; then either the direction is
       all-gathered into the shared ``.grad`` (the user's optimizer steps, replicated), or,
       with ``optimizer=`` a :class:`ShardedAdam`, nothing is written to the shared ``.grad``:
       the shard is stepped and the parameters all-gathered (ZeRO-1);
    6. the heads' ``.grad`` = ∇ Σ_t c_t L_t, averaged over the ranks (one all-reduce).

    Bytes sent per rank (ring model, fp32 G): 4·(W−1)/W·(T·P + P) for the reduce-scatter and
    the all-gather, against 8·(W−1)/W·T·P for all-reducing G (``exchange="all_reduce"``, also
    exact) and 8·(W−1)/W·P for DDP's summed step: (T + 1)/2 gradient all-reduces.
    ``exchange="local_gram"`` averages the per-rank Grams instead (T² values, plus one
    all-reduce of the combined direction): cheap but **biased** by the spread between the ranks,
    K + (1/W) Σ_r (G_r − G)(G_r − G)ᵀ; it is there to measure that bias.

    Every rank refuses a step together: a NaN/Inf loss or gradient on any rank reaches the
    all-reduced losses or K's diagonal on every rank.

    Args:
        shared_params, task_params, num_tasks, diagnostics_every, on_nonfinite: see
            :class:`~mtl_fast.strategies.Strategy` (diagnostics come from the global K; the
            sign-conflict fraction, which needs all of G, is left out).
        weighting: ``(K (T, T), losses (T,)) -> (w, c)`` (:mod:`mtl_fast.distributed` has
            ``weighting_of(strategy)``, ``from_weights(fn)``, ``fixed(weights)``).
        group: the process group (default: the default group).
        module: the model if it is wrapped in DistributedDataParallel (the per-task passes must
            then run inside :meth:`no_sync`); FSDP is refused.
        exchange: "reduce_scatter", "all_reduce" or "local_gram" (see above).
        optimizer: a :class:`ShardedAdam` over ``shared_params`` (ZeRO-1), or None.
        reduce_scatter: how the reduce-scatter runs (:class:`Communicator`).
        broadcast: copy rank 0's parameters to every rank at construction (as DDP does).
        batched, chunk_size, backend: as :class:`~mtl_fast.strategies.MGDA`.
    """

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        weighting: Weighting,
        group: dist.ProcessGroup | None = None,
        comm: Communicator | None = None,
        module: torch.nn.Module | None = None,
        exchange: str = "reduce_scatter",
        optimizer: ShardedAdam | None = None,
        reduce_scatter: str = "auto",
        broadcast: bool = True,
        batched: bool | None = False,
        **options: Unpack[BackendKwargs],
    ) -> None:
        super().__init__(shared_params, task_params, num_tasks, batched=batched, **options)
        if not callable(weighting):
            raise TypeError(f"weighting must be callable (K, losses) -> (w, c), got {weighting!r}")
        if exchange not in EXCHANGES:
            raise ValueError(f"exchange must be one of {EXCHANGES}, got {exchange!r}")
        if optimizer is not None:
            if not isinstance(optimizer, ShardedAdam):
                raise TypeError(f"optimizer must be a ShardedAdam or None, got {optimizer!r}")
            if exchange != "reduce_scatter":
                raise ValueError("optimizer: a ShardedAdam needs exchange='reduce_scatter'")
            if [id(p) for p in optimizer.params] != [id(p) for p in self.shared_params]:
                raise ValueError("optimizer must be built over shared_params, in their order")
        self.comm = comm if comm is not None else Communicator(group, reduce_scatter=reduce_scatter)
        self.ddp = check_module(module)
        self.weighting = weighting
        self.exchange = exchange
        self.optimizer = optimizer
        self.comm.check_same("num_tasks and the number of shared scalars", [num_tasks, self._P])
        if broadcast:
            broadcast_parameters(self.comm, [*self.shared_params, *self.task_params])
        self.comm.log.reset()
        self._layout = ShardLayout(self._P, self.comm.world)
        self._send: torch.Tensor | None = None
        self._recv: torch.Tensor | None = None
        self._gathered: torch.Tensor | None = None
        self.shard_gradients: torch.Tensor | None = None

    @property
    def _P(self) -> int:
        return sum(p.numel() for p in self.shared_params)

    def _method(self) -> Strategy | None:
        """The single-process strategy whose decision ``weighting`` is (``weighting_of`` and
        :func:`~mtl_fast.distributed.distribute` pass its bound ``_decide``), or None."""
        owner = getattr(self.weighting, "__self__", None)
        return owner if isinstance(owner, Strategy) else None

    def state_dict(self) -> dict[str, Any]:
        """The step count and path (:meth:`Strategy.state_dict`) and, under ``"method"``, the
        state of the wrapped method (PCGrad's generator, Nash-MTL's α, …), so that a resumed
        run continues exactly. ShardedAdam's state is the optimizer's own ``state_dict``."""
        state = super().state_dict()
        method = self._method()
        if method is not None:
            state["method"] = method.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of a strategy built the same way (the wrapped method's
        state first: a refused state changes nothing of this strategy)."""
        method = self._method()
        if method is not None:
            if "method" not in state:
                raise ValueError(
                    "state has no 'method' entry: it was not taken from a distributed strategy "
                    f"over a {type(method).__name__}"
                )
            self._check_state(state)
            method.load_state_dict(state["method"])
        super().load_state_dict(state)

    def no_sync(self) -> contextlib.AbstractContextManager[None]:
        """Run the step's forward and :meth:`backward` inside this: DDP's gradient hooks stay
        idle (the exchange is this strategy's). Nothing without DDP."""
        return no_sync(self.ddp)

    # -- the exchange ------------------------------------------------------------------------
    def _shard(self, J: torch.Tensor) -> torch.Tensor:
        """(T, shard) = this rank's columns of G = (1/W) Σ_r J_r."""
        T, lay = J.shape[0], self._layout
        if self._send is None or self._send.dtype != J.dtype:
            self._send = torch.empty((lay.world, T, lay.shard), dtype=J.dtype, device=J.device)
            self._recv = torch.empty((T, lay.shard), dtype=J.dtype, device=J.device)
        assert self._recv is not None
        lay.pack(J, self._send)
        self.comm.reduce_scatter(self._recv.view(-1), self._send.view(-1))
        return self._recv.div_(self.comm.world)

    def _global_gram(
        self, part: torch.Tensor, lv: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All-reduce [scale · part (T, T), lv / W] as one buffer: (Σ_r, mean losses)."""
        T, W = lv.shape[0], self.comm.world
        buf = torch.cat([part.double().reshape(-1) * scale, lv.double() / W])
        buf = self.comm.all_reduce(buf.to(self.comm.device)).to(part.device)
        return buf[: T * T].view(T, T).to(part.dtype), buf[T * T :].to(lv.dtype)

    def _direction(
        self, J: torch.Tensor, lv: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(K (T, T), the mean losses (T,), the gradients the direction is combined from: this
        rank's (T, shard) columns of G, all of G, or the local J for "local_gram")."""
        W = self.comm.world
        if self.exchange == "reduce_scatter":
            G = self._shard(J)
            K, glv = self._global_gram(self._gram(G), lv, 1.0)
            return K, glv, G
        if self.exchange == "all_reduce":
            self.comm.all_reduce(J, average=True)
            glv = self.comm.all_reduce(lv.double().to(self.comm.device), average=True)
            return self._gram(J), glv.to(lv.device, lv.dtype), J
        K, glv = self._global_gram(self._gram(J), lv, 1.0 / W)
        return K, glv, J

    def _shared_direction(self, G: torch.Tensor, c: torch.Tensor) -> torch.Tensor | None:
        """(P,) the combined direction on every rank, or None when a ShardedAdam steps."""
        if self.exchange == "all_reduce":
            return self._combined(G, c, reuse=False)
        if self.exchange == "local_gram":
            return self.comm.all_reduce(self._combined(G, c, reuse=False), average=True)
        if self.optimizer is not None:
            self.optimizer.step(G, c)
            return None
        d_shard = self._combined(G, c, reuse=False)
        lay = self._layout
        if self._gathered is None or self._gathered.dtype != d_shard.dtype:
            self._gathered = torch.empty(lay.padded, dtype=d_shard.dtype, device=d_shard.device)
        self.comm.all_gather(self._gathered, d_shard)
        return self._gathered[: lay.numel]

    # -- the step ----------------------------------------------------------------------------
    def backward(
        self, losses: Sequence[torch.Tensor], /, *, features: torch.Tensor | None = None
    ) -> bool:
        """Write the method's gradients (or step the ShardedAdam); False when refused (skip).
        ``features`` is ignored."""
        del features
        losses = check_losses(losses, self.num_tasks)
        self._check_trainable()
        self._track_path()
        lv = loss_vector(losses)
        arena = self._fill_arena(losses, self.batched, self.chunk_size)
        self._lap("backward")
        K, glv, G = self._direction(arena.J, lv)
        self.shard_gradients = G
        bad = self._bad_tasks(glv, K)
        if bad is not None:
            return self._refuse(glv, *bad)
        w, c = self.weighting(K, glv)
        d = self._shared_direction(G, c)
        self._lap("combination")
        self._backward_heads_averaged(losses, c)
        if d is not None:
            self._accumulate_shared(arena, d)
        self._lap("backward")
        diag = None
        if self._diagnostics_due():
            diag = gradient_diagnostics(
                K, None, step=self.num_steps + 1, path_length=self.path_length
            )
        self._record_step(glv, w, c, diag)
        return True

    def _backward_heads_averaged(self, losses: Sequence[torch.Tensor], c: torch.Tensor) -> None:
        """Heads' ``.grad`` += the ranks' mean of ∇ Σ_t c_t L_t (one all-reduce)."""
        heads = self.task_params
        if not heads:
            return
        outs = loss_grads(losses, c)
        grads = torch.autograd.grad(
            list(losses), heads, grad_outputs=outs, allow_unused=True, materialize_grads=True
        )
        saved = [p.grad for p in heads]
        for p, g in zip(heads, grads):
            p.grad = g
        all_reduce_grads(self.comm, heads)
        for p, old in zip(heads, saved):
            if old is not None:
                old.add_(p.grad)  # type: ignore[arg-type]
                p.grad = old
