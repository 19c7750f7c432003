"""The gradient arena: a (T, P) buffer that autograd's per-task gradients are written into."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from mtl_fast._core import engine
from mtl_fast._core.flat import check_params, layout_signature, offsets
from mtl_fast._core.validate import (
    LayoutError,
    require_bool,
    require_float,
    require_optional_bool,
    require_positive_int,
    require_same_device,
    require_tensor,
)

# Whether ``backward`` runs one vmapped backward (``batched=None``) per device type. Measured on
# the CPU (one thread, interleaved, medians; benchmarks/results/cpu/*-whole-step.*): the batched
# backward is slower than T sequential ones there (ResNet-18, T = 10: 4,654 ms against ~3,700 ms;
# MLP, T = 10: 20.7 ms against ~12 ms), because vmap's batched kernels do the same arithmetic with
# more memory traffic and a CPU has no idle units for it to fill. On a GPU small-batch backward
# passes leave the device idle, which is what batching fills; the GPU report's strategy bench times
# both ("mgda" and "mgda-batched") and decides. Until it has, the GPU default stays sequential.
# With glibc told to keep freed memory (docs/strategies.md, "The CPU heap's part") the batched
# pass was the faster one on ViT-S, T = 10 (613 ms against 740 ms; 1.01× the floor's step): the
# CPU default stays sequential because with glibc's own settings its T gradients per parameter
# are faulted in afresh every step (1,006 ms against 915 ms), and a library cannot pick them.
BATCHED_DEFAULT: dict[str, bool] = {"cpu": False, "cuda": False}


def _leaves_outside(roots: Sequence[torch.Tensor], skip: set[int]) -> list[torch.Tensor]:
    """The leaf tensors that require grad in the graph of ``roots``, except those in ``skip``
    (ids), in discovery order: a walk over the autograd graph (~1 µs per node)."""
    seen: set[int] = set()
    out: list[torch.Tensor] = []
    stack: list[Any] = [r.grad_fn for r in roots if r.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        var = getattr(fn, "variable", None)
        if isinstance(var, torch.Tensor):
            if id(var) not in skip:
                out.append(var)
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions if nxt is not None)
    return out


class TaskGradients:
    """A (T, P) gradient arena over shared parameters: row t holds task t's gradient.

    :meth:`backward` fills every row from T losses, either with one backward pass per task
    (sequential) or with one vmapped backward pass per chunk of tasks (``batched=True``:
    ``torch.autograd.grad(..., is_grads_batched=True)``). Inside ``with arena.task(t):`` every
    shared parameter's ``.grad`` is a view of its slice of row t (zeroed on entry), so a
    ``loss_t.backward()`` written by hand accumulates into the row in place, as DDP's
    ``gradient_as_bucket_view`` does. A parameter that task t's loss does not reach keeps zeros
    in row t.

    Args:
        params: the shared parameters (any shapes; one floating dtype and one device).
        num_tasks: T ≥ 1.

    Attributes:
        J: (T, P) the arena, in the parameters' dtype and device.
        batched_fallback: why the last ``batched=True`` request ran sequentially instead (vmap
            could not differentiate the graph: see :meth:`backward`), or None.
        filled_batched: whether the last :meth:`backward` filled the rows with one vmapped pass
            (a NaN/Inf in one task's backward then reaches every row: 0 · NaN).

    Example:
        >>> import torch, mtl_fast
        >>> trunk = torch.nn.Linear(3, 2)
        >>> arena = mtl_fast.TaskGradients(trunk.parameters(), num_tasks=2)
        >>> x = torch.randn(5, 3)
        >>> losses = [trunk(x).sum(), trunk(x).pow(2).sum()]
        >>> arena.backward(losses)
        >>> arena.J.shape
        torch.Size([2, 8])
    """

    def __init__(self, params: Sequence[torch.Tensor] | object, num_tasks: int) -> None:
        self.params = check_params(params)  # type: ignore[arg-type]
        for i, p in enumerate(self.params):
            if not p.requires_grad:
                raise ValueError(f"params[{i}] does not require grad; the arena would stay empty")
        require_positive_int("num_tasks", num_tasks, 1)
        self.num_tasks = num_tasks
        self._offsets = offsets(self.params)
        first = self.params[0]
        self.J = torch.zeros(num_tasks, self._offsets[-1], dtype=first.dtype, device=first.device)
        # Built once: the per-task views and per-parameter blocks every step writes through.
        self._rows = [self._views(self.J[t]) for t in range(num_tasks)]
        self._blocks = self.per_parameter()
        self._ids = {id(p) for p in self.params}
        # Compared by MultiAdam.step: an arena over other parameters (or another order) is
        # refused there, on the host.
        self.layout = layout_signature(self.params)
        self.batched_fallback: str | None = None
        self.filled_batched = False
        self._vmap_failed = False

    @property
    def num_params(self) -> int:
        """P, the number of shared scalars."""
        return self._offsets[-1]

    def row_views(self, t: int) -> list[torch.Tensor]:
        """Views of row t shaped like each parameter."""
        self._check_task(t)
        return self._views(self.J[t])

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [flat[o : o + p.numel()].view_as(p) for p, o in zip(self.params, self._offsets[:-1])]

    def per_parameter(self) -> list[torch.Tensor]:
        """The arena as per-parameter blocks, each (T, *param_shape): views, no copy."""
        T = self.num_tasks
        return [
            self.J[:, o : o + p.numel()].view(T, *p.shape)
            for p, o in zip(self.params, self._offsets[:-1])
        ]

    def _check_task(self, t: int) -> None:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.num_tasks:
            raise ValueError(f"task must be an int in [0, {self.num_tasks}), got {t!r}")

    def _check_params_unchanged(self) -> None:
        """Raise :class:`LayoutError` if a parameter was cast or moved since the arena was built
        (its gradients would be converted into rows of the old dtype or device)."""
        J = self.J
        for i, p in enumerate(self.params):
            if p.dtype != J.dtype or p.device != J.device:
                raise LayoutError(
                    f"params[{i}] is now {p.dtype} on {p.device} but the arena holds "
                    f"{J.dtype} on {J.device}: the parameters were cast or moved after the "
                    "arena was built; build it again"
                )

    @contextmanager
    def task(self, t: int) -> Iterator[torch.Tensor]:
        """Route the shared parameters' gradients into row t while the block runs; yields it."""
        self._check_task(t)
        self._check_params_unchanged()
        saved = [p.grad for p in self.params]
        row = self.J[t]
        row.zero_()
        views = self._rows[t]
        for p, v in zip(self.params, views):
            p.grad = v
        try:
            yield row
        finally:
            for p, v, old in zip(self.params, views, saved):
                # Autograd accumulates in place into an existing .grad; should it have replaced
                # the tensor instead (create_graph, a layout change), copy it into the arena.
                if p.grad is not None and p.grad is not v:
                    v.copy_(p.grad)
                p.grad = old

    def _check_losses(self, losses: Sequence[torch.Tensor]) -> None:
        """T scalar float tensors that autograd can differentiate: checked before any row is
        written, so a bad loss leaves the arena as it was."""
        if isinstance(losses, torch.Tensor) or not isinstance(losses, Sequence):
            raise TypeError(f"losses must be a sequence of T scalar tensors, got {type(losses)}")
        if len(losses) != self.num_tasks:
            raise ValueError(
                f"losses has {len(losses)} entries, expected num_tasks={self.num_tasks}"
            )
        for t, loss in enumerate(losses):
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"losses[{t}] must be a scalar tensor")
            require_float(f"losses[{t}]", loss)
            if not loss.requires_grad:
                raise ValueError(
                    f"losses[{t}] does not require grad: it is not connected to the parameters "
                    "by autograd (computed under torch.no_grad, or detached)"
                )

    def backward(
        self,
        losses: Sequence[torch.Tensor],
        *,
        retain_graph: bool = False,
        batched: bool | None = None,
        chunk_size: int | None = None,
        accumulate_others: bool = True,
    ) -> None:
        """Fill every row: row t = ∇ losses[t] w.r.t. the shared parameters.

        Sequential (``batched=False``): one backward pass per task; autograd's gradient of each
        parameter is copied into its slice of the row (one read and one write of P per task).

        Batched (``batched=True``): one ``torch.autograd.grad(stack(losses), params,
        grad_outputs=rows of the identity, is_grads_batched=True)`` per chunk of ``chunk_size``
        tasks (default: all T at once), i.e. one vmapped backward pass whose per-parameter
        outputs (chunk, *param_shape) are copied into the arena's columns of those rows. Its
        memory grows with the chunk (every intermediate gradient of the backward pass is held
        once per task of the chunk): ``chunk_size`` bounds it. When vmap cannot differentiate
        the graph (a ``torch.autograd.Function`` without a vmap rule, a tensor with
        ``retain_grad()``, an operation vmap refuses; see docs/strategies.md for the modules
        measured) the call runs sequentially instead, and :attr:`batched_fallback` says why
        (later calls then go sequential at once). ``None`` picks per device
        (:data:`BATCHED_DEFAULT`: sequential on the CPU and, until measured, on a GPU).

        Args:
            losses: T scalar tensors.
            retain_graph: keep the graph after the last pass (it is kept between passes).
            batched, chunk_size: see above; chunk_size ≥ 1 or None.
            accumulate_others: leaves other than the shared parameters (the task heads)
                accumulate ∇ Σ_t L_t into ``.grad`` as ``loss.backward()`` would (default);
                False leaves every ``.grad`` untouched (the strategies weigh the heads
                themselves).
        """
        self._check_losses(losses)
        require_bool("retain_graph", retain_graph)
        require_optional_bool("batched", batched)
        require_bool("accumulate_others", accumulate_others)
        if chunk_size is not None:
            require_positive_int("chunk_size", chunk_size, 1)
        self._check_params_unchanged()
        if batched is None:
            batched = BATCHED_DEFAULT.get(self.J.device.type, False)
        self.filled_batched = False
        if batched and not self._vmap_failed:
            if self._backward_batched(losses, retain_graph, chunk_size, accumulate_others):
                self.filled_batched = True
                return
        self._backward_sequential(losses, retain_graph, accumulate_others)

    def _backward_sequential(
        self, losses: Sequence[torch.Tensor], retain_graph: bool, accumulate_others: bool
    ) -> None:
        """One backward pass per task. The shared parameters' ``.grad`` are emptied first, so
        autograd hands each its freshly computed gradient without a copy; a post-accumulate
        hook copies that tensor into the row and empties ``.grad`` again at once, while it is
        still in cache, and its memory goes back to the allocator for the next parameter's
        gradient. The previous ``.grad`` are restored at the end.

        Measured on ViT-S (one thread, T = 3, 21.6 M parameters): the backward passes took the
        same time as the floor's plain ``loss.backward()`` calls plus 23-38 ms per task when
        every gradient was copied after its pass (87 MB written back to memory, then read
        again); routing ``.grad`` into zeroed rows costs a zeroing pass per row instead.
        ``accumulate_others=False`` restricts each pass to the shared parameters (``inputs=``).
        """
        params = self.params
        inputs = None if accumulate_others else params
        saved = [p.grad for p in params]
        last = self.num_tasks - 1
        current = [0]
        reached = [False] * len(params)

        def hook_for(i: int) -> Callable[[torch.Tensor], None]:
            def hook(p: torch.Tensor) -> None:
                g = p.grad
                if g is not None:
                    self._rows[current[0]][i].copy_(g)
                    reached[i] = True
                    p.grad = None

            return hook

        handles = [p.register_post_accumulate_grad_hook(hook_for(i)) for i, p in enumerate(params)]
        try:
            for p in params:
                p.grad = None
            for t, loss in enumerate(losses):
                current[0] = t
                for i in range(len(reached)):
                    reached[i] = False
                engine.backward(loss, retain_graph=retain_graph or t < last, inputs=inputs)
                if not all(reached):  # parameters this loss does not reach
                    for v, hit in zip(self._rows[t], reached):
                        if not hit:
                            v.zero_()
        finally:
            for h in handles:
                h.remove()
            for p, old in zip(params, saved):
                p.grad = old

    def _backward_batched(
        self,
        losses: Sequence[torch.Tensor],
        retain_graph: bool,
        chunk_size: int | None,
        accumulate_others: bool,
    ) -> bool:
        """The vmapped path; False (nothing written, graph intact) when vmap cannot run."""
        T = self.num_tasks
        L = torch.stack([loss.reshape(()) for loss in losses])
        eye = torch.eye(T, dtype=L.dtype, device=L.device)
        step = T if chunk_size is None else min(chunk_size, T)
        for c0 in range(0, T, step):
            c1 = min(T, c0 + step)
            last = c1 == T
            try:
                grads = torch.autograd.grad(
                    L,
                    self.params,
                    grad_outputs=eye[c0:c1],
                    is_grads_batched=True,
                    # The first chunk keeps the graph: should vmap fail, the sequential path
                    # needs it.
                    retain_graph=not last or c0 == 0 or retain_graph or accumulate_others,
                    allow_unused=True,
                    materialize_grads=True,
                )
            except (RuntimeError, NotImplementedError) as exc:
                if c0 > 0:  # vmap ran on this graph once: this is not a vmap limitation
                    raise
                self._vmap_failed = True
                self.batched_fallback = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                warnings.warn(
                    "TaskGradients.backward(batched=True): vmap cannot differentiate this graph, "
                    f"running one backward pass per task instead ({self.batched_fallback})",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return False
            torch._foreach_copy_([b[c0:c1] for b in self._blocks], list(grads))
        self.batched_fallback = None
        if accumulate_others:
            others = _leaves_outside(list(losses), self._ids)
            if others:
                torch.autograd.backward(list(losses), inputs=others, retain_graph=retain_graph)
        return True

    def assign_grad(self, d: torch.Tensor) -> None:
        """Set each shared parameter's ``.grad`` to its slice of the flat direction d (P,),
        a float tensor on the arena's device (cast to the parameters' dtype)."""
        d = require_tensor("d", d)
        require_float("d", d)
        if d.shape != (self.num_params,):
            raise ValueError(f"d must have shape ({self.num_params},), got {tuple(d.shape)}")
        require_same_device("d", d, "the arena", self.J)
        self._check_params_unchanged()
        for p, v in zip(self.params, self._views(d.to(self.J.dtype))):
            p.grad = v
