"""Combine-then-step strategies: T losses in, ``.grad`` of Σ_t c_t L_t out; the user steps."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from mtl_fast._core.dispatch import resolve
from mtl_fast._core.options import spells
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast._core.validate import (
    require_backend_name,
    require_optional_bool,
    require_positive_int,
)
from mtl_fast.optim.task_gradients import TaskGradients
from mtl_fast.strategies._base import Strategy, check_losses, loss_vector, raise_or_skip
from mtl_fast.strategies._options import StrategyKwargs

if TYPE_CHECKING:
    from typing_extensions import Unpack


def loss_grads(losses: Sequence[torch.Tensor], scales: torch.Tensor) -> list[torch.Tensor]:
    """The incoming gradients c_t of the T losses (each shaped as its loss, in the losses'
    dtype) for a backward pass of Σ_t c_t L_t that builds no graph for the sum."""
    c = scales.to(losses[0].dtype)
    return [ct.reshape(loss.shape) for ct, loss in zip(c.unbind(), losses)]


# K (T, T) and the losses (T,) -> (w, c): the weights the method reports and the coefficients
# of Σ_t c_t L_t it applies (the same tensor for most methods).
Decide = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@spells(Strategy.__init__, StrategyKwargs)
class CombineStrategy(Strategy):
    """Base of the strategies that write gradients and leave the step to the user's optimizer.

    After :meth:`backward`, every parameter's ``.grad`` holds the gradient of Σ_t c_t L_t, where
    c = ``last.loss_scales`` is what the method chose: the shared parameters get the combined
    direction Σ_t c_t ∇L_t, each head its own task's c_t ∇_{θ_t} L_t. Gradients are accumulated
    into existing ``.grad`` as autograd does, so call the optimizer's ``zero_grad()`` first, as
    usual.

    A call refused for its arguments (``losses``, ``features``, a parameter frozen since
    construction) raises before anything changes: parameters, ``.grad`` and the strategy's state
    stay as they were. A step refused for NaN/Inf (``on_nonfinite``) clears ``.grad`` instead.

    Per-step cost: everything that does not depend on the step (the arena, its per-task views,
    the backend of each op, the hyperparameters' validity) is settled once, at construction or
    on the first step; a step then runs the user's backward passes, the few ops of the method,
    and at most one host read-back for the NaN/Inf refusal (none with ``on_nonfinite="ignore"``).

    Args:
        shared_params, task_params, num_tasks, diagnostics_every, on_nonfinite: see
            :class:`~mtl_fast.strategies.Strategy`.
        backend, batched, chunk_size: see :class:`~mtl_fast.strategies.MGDA`.
    """

    # Set by the strategy benchmark to time the phases inside ``backward`` (called with the name
    # of each phase as it ends); None in normal use, where it costs one attribute test a phase.
    _phase: Callable[[str], None] | None = None
    # Where the diagnostics' gradients live (MGDA-UB's are w.r.t. the features).
    space = "parameters"
    # How the arena is filled (see :meth:`_arena_options`) and the ops' backend: constructor
    # arguments, checked and kept by :meth:`_backend_options`.
    batched: bool | None
    chunk_size: int | None
    backend: str | None

    def __init__(
        self,
        shared_params: Iterable[torch.Tensor],
        task_params: Iterable[torch.Tensor] = (),
        num_tasks: int = 2,
        *,
        backend: str | None = None,
        batched: bool | None = None,
        chunk_size: int | None = None,
        **options: Unpack[StrategyKwargs],
    ) -> None:
        super().__init__(shared_params, task_params, num_tasks, **options)
        self._backend_options(backend, batched, chunk_size)

    def backward(
        self, losses: Sequence[torch.Tensor], /, *, features: torch.Tensor | None = None
    ) -> bool:
        """Turn the T losses into ``.grad``; returns False if the step was refused (skip mode).

        The Gram-space methods (MGDA, UPGrad, DualProj, the aggregators) run
        :meth:`_gram_step` with their :meth:`_decide`; ``features`` is ignored there (MGDA-UB
        and linear scalarisation have their own step)."""
        del features
        return self._gram_step(losses, self._decide)

    def _decide(self, K: torch.Tensor, lv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(w, c) from the Gram K (T, T) and the losses (T,): the weights the method reports
        and the coefficients of Σ_t c_t L_t it applies."""
        raise NotImplementedError

    def _backend_options(
        self, backend: str | None, batched: bool | None, chunk_size: int | None
    ) -> None:
        """Keep the ops' ``backend``, check how the arena is filled, resolve gram and combine."""
        self.backend = backend
        self._arena_options(batched, chunk_size)
        self._ops(backend)

    def _arena_options(self, batched: bool | None, chunk_size: int | None) -> None:
        """Check and keep how the arena is filled: one backward pass per task (False), one
        vmapped pass per chunk of ``chunk_size`` tasks (True), or per device (None: see
        :data:`mtl_fast.optim.task_gradients.BATCHED_DEFAULT`)."""
        require_optional_bool("batched", batched)
        if chunk_size is not None:
            require_positive_int("chunk_size", chunk_size, 1)
        self.batched = batched
        self.chunk_size = chunk_size

    def _gram_step(self, losses: Sequence[torch.Tensor], decide: Decide) -> bool:
        """One step of a method whose coefficients are a function of the Gram K = J Jᵀ (and the
        losses): T backward passes into the arena J (T, P), K, one finiteness check of losses
        and gradients together (a NaN/Inf row of J shows on K's diagonal; nothing the user sees
        has changed yet, so a refusal leaves it as it was), (w, c) = ``decide(K, losses)``, the
        shared ``.grad`` += Jᵀc (one pass over J, no further trunk backward), the heads' ``.grad``
        += ∇ Σ_t c_t L_t (a backward pass through the heads only), diagnostics when due."""
        losses = check_losses(losses, self.num_tasks)
        self._check_trainable()
        lv = loss_vector(losses)
        arena = self._fill_arena(losses, self.batched, self.chunk_size)
        self._lap("backward")
        K = self._gram(arena.J)
        bad = self._bad_tasks(lv, K)
        if bad is not None and bad[1] == "gradient" and arena.filled_batched:
            # One vmapped pass spreads a task's NaN/Inf to every row (0 · NaN in the others'):
            # one pass per task (the graph is kept) names the culprits, or clears them all.
            arena = self._fill_arena(losses, False)
            K = self._gram(arena.J)
            bad = self._bad_tasks(lv, K)
        if bad is not None:
            return self._refuse(lv, *bad)
        w, c = decide(K, lv)
        d = self._combined(arena.J, c, reuse=self._shared_grads_empty())
        self._lap("combination")
        self._backward_heads(losses, c)
        self._accumulate_shared(arena, d)
        self._lap("backward")
        self._track_path()
        diag = self._diagnose(arena.J, K) if self._diagnostics_due() else None
        self._record_step(lv, w, c, diag)
        return True

    def _record_step(self, lv: torch.Tensor, w: torch.Tensor, c: torch.Tensor, diag: Any) -> None:
        self.num_steps += 1
        self.last.step = self.num_steps
        self.last.losses = lv
        # Fresh tensors of this step, with no history: recorded as they are, no copy.
        self.last.weights = w
        self.last.loss_scales = c
        self.last.diagnostics = diag
        self.last.skipped = []

    def _lap(self, phase: str) -> None:
        if self._phase is not None:
            self._phase(phase)

    def _arena(self) -> TaskGradients:
        arena: TaskGradients | None = getattr(self, "_arena_cache", None)
        if arena is None:
            arena = TaskGradients(self.shared_params, self.num_tasks)
            self._arena_cache = arena
        return arena

    def _fill_arena(
        self,
        losses: Sequence[torch.Tensor],
        batched: bool | None = False,
        chunk_size: int | None = None,
    ) -> TaskGradients:
        """Row t of the arena = ∇_shared L_t; heads untouched; the graph is kept."""
        arena = self._arena()
        arena.backward(
            losses,
            retain_graph=True,
            batched=batched,
            chunk_size=chunk_size,
            accumulate_others=False,
        )
        return arena

    def _ops(self, backend: str | None) -> None:
        """Resolve the backend of gram and combine once (an explicit backend that cannot run
        here raises now, at construction, not at the first step)."""
        require_backend_name("backend", backend)
        device = self.shared_params[0].device
        self._gram_fn = resolve("gram", backend, device)
        self._combine_fn = resolve("combine", backend, device)
        self._combine_into = None
        if device.type == "cpu" and getattr(self._combine_fn, "__module__", "").startswith(
            "mtl_fast.kernels.cpu"
        ):
            self._combine_into = self._combine_fn
        self._d: torch.Tensor | None = None

    def _gram(self, J: torch.Tensor) -> torch.Tensor:
        """(T, T) Gram of the (T, N) arena (already valid: no per-step checks)."""
        K: torch.Tensor = self._gram_fn(J.unsqueeze(0))[0]
        return K

    def _combined(self, J: torch.Tensor, c: torch.Tensor, reuse: bool) -> torch.Tensor:
        """(P,) d = Σ_t c_t J_t in J's dtype. With ``reuse`` (no shared ``.grad`` can alias it)
        d is written into a buffer kept across steps: a fresh (P,) tensor costs page faults on
        first touch (22-42 ms for P = 11.2 M fp32, measured, against 2 ms to overwrite one)."""
        w = c.to(accumulation_dtype(J.dtype)).unsqueeze(0)
        if reuse and self._combine_into is not None:
            if self._d is None:
                self._d = torch.empty((1, J.shape[1]), dtype=J.dtype, device=J.device)
            out: torch.Tensor = self._combine_into(J.unsqueeze(0), w, out=self._d)
            return out[0]
        d: torch.Tensor = self._combine_fn(J.unsqueeze(0), w)
        return d[0]

    def _refuse(self, losses: torch.Tensor, bad: list[int], what: str) -> bool:
        """Refuse a step: clear every ``.grad`` (so the user's optimizer skips it), then raise
        unless ``on_nonfinite="skip"``."""
        self._track_path()
        for p in [*self.shared_params, *self.task_params]:
            p.grad = None
        raise_or_skip(self.on_nonfinite, what, bad)
        self.last.losses = losses
        self.last.skipped = bad
        return False

    def _backward_heads(self, losses: Sequence[torch.Tensor], scales: torch.Tensor) -> None:
        """Task-specific ``.grad`` += ∇ Σ_t c_t L_t: one backward pass from the T losses with
        c_t as their incoming gradients, restricted to the heads (no pass through the trunk, no
        graph built for the sum). Every head requires grad: a frozen one is refused (see
        :meth:`~mtl_fast.strategies.Strategy._check_trainable`)."""
        heads = self.task_params
        if not heads:
            return
        torch.autograd.backward(list(losses), grad_tensors=loss_grads(losses, scales), inputs=heads)

    def _backward_all(self, losses: Sequence[torch.Tensor], scales: torch.Tensor) -> bool:
        """Every ``.grad`` += ∇ Σ_t c_t L_t (one backward pass from the T losses with c_t as their
        incoming gradients, through the trunk and the heads), :meth:`_average_grads`, then
        whether every shared ``.grad`` is finite."""
        torch.autograd.backward(list(losses), grad_tensors=loss_grads(losses, scales))
        self._average_grads()
        return self._shared_grads_finite()

    def _average_grads(self) -> None:
        """Nothing on one process; the data-parallel forms average every ``.grad`` over the
        ranks here."""

    def _accumulate_shared(self, arena: TaskGradients, d: torch.Tensor) -> None:
        """Shared ``.grad`` += the flat direction d (P,), as autograd would accumulate."""
        for p, v in zip(self.shared_params, arena._views(d.to(arena.J.dtype))):
            if p.grad is None:
                p.grad = v
            else:
                p.grad.add_(v)

    def _shared_grads_empty(self) -> bool:
        return all(p.grad is None for p in self.shared_params)

    def _bad_tasks(self, lv: torch.Tensor, K: torch.Tensor | None) -> tuple[list[int], str] | None:
        """The tasks whose loss (first) or gradient (the Gram's diagonal) is NaN/Inf, with what
        is bad, or None when all are finite: one fused sum and one host read when they are (a
        NaN/Inf anywhere makes the sum non-finite; only then are the culprits named)."""
        if self.on_nonfinite == "ignore":
            return None
        total = lv.sum() if K is None else lv.sum() + K.diagonal().sum().to(lv.dtype)
        if bool(torch.isfinite(total)):
            return None
        bad = torch.nonzero(~torch.isfinite(lv)).flatten().tolist()
        if bad:
            return [int(i) for i in bad], "loss"
        if K is not None:
            bad = torch.nonzero(~torch.isfinite(K.diagonal())).flatten().tolist()
            if bad:
                return [int(i) for i in bad], "gradient"
        return None  # finite values whose sum overflowed

    def _shared_grads_finite(self) -> bool:
        """Whether every shared ``.grad`` is finite: one summing pass, one host read."""
        if self.on_nonfinite == "ignore":
            return True
        grads = [p.grad for p in self.shared_params if p.grad is not None]
        if not grads:
            return True
        sums = torch.stack([g.sum(dtype=accumulation_dtype(g.dtype)) for g in grads])
        if bool(torch.isfinite(sums.sum())):
            return True
        return all(bool(torch.isfinite(g).all()) for g in grads)
