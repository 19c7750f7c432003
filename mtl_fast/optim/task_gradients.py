"""The gradient arena: a (T, P) buffer that autograd writes per-task gradients into."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from mtl_fast._core.flat import check_params, offsets
from mtl_fast._core.validate import require_positive_int


class TaskGradients:
    """A (T, P) gradient arena over shared parameters: row t holds task t's gradient.

    Inside ``with arena.task(t):`` every shared parameter's ``.grad`` is a view of its slice of
    row t (zeroed on entry), so ``loss_t.backward()`` writes the Jacobian row in place with no
    extra copy: the same trick as DDP's ``gradient_as_bucket_view``. On exit the previous
    ``.grad`` of each parameter is restored. A parameter that task t's loss does not reach keeps
    zeros in row t.

    Args:
        params: the shared parameters (any shapes; one floating dtype and one device).
        num_tasks: T ≥ 1.

    Attributes:
        J: (T, P) the arena, in the parameters' dtype and device.

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

    @property
    def num_params(self) -> int:
        """P, the number of shared scalars."""
        return self._offsets[-1]

    def row_views(self, t: int) -> list[torch.Tensor]:
        """Views of row t shaped like each parameter."""
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

    @contextmanager
    def task(self, t: int) -> Iterator[torch.Tensor]:
        """Route the shared parameters' gradients into row t while the block runs; yields it."""
        self._check_task(t)
        saved = [p.grad for p in self.params]
        row = self.J[t]
        row.zero_()
        views = self.row_views(t)
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

    def backward(self, losses: Sequence[torch.Tensor], *, retain_graph: bool = False) -> None:
        """Fill every row: row t = ∇ losses[t] w.r.t. the shared parameters.

        Runs one backward per task; the graph is kept between them (and after the last one
        only if ``retain_graph``). Gradients of non-shared parameters (the task heads) are
        accumulated into their ``.grad`` as usual.
        """
        if len(losses) != self.num_tasks:
            raise ValueError(
                f"losses has {len(losses)} entries, expected num_tasks={self.num_tasks}"
            )
        for t, loss in enumerate(losses):
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise ValueError(f"losses[{t}] must be a scalar tensor")
            with self.task(t):
                loss.backward(retain_graph=retain_graph or t < self.num_tasks - 1)

    def assign_grad(self, d: torch.Tensor) -> None:
        """Set each shared parameter's ``.grad`` to its slice of the flat direction d (P,)."""
        if d.shape != (self.num_params,):
            raise ValueError(f"d must have shape ({self.num_params},), got {tuple(d.shape)}")
        for p, v in zip(self.params, self._views(d.to(self.J.dtype))):
            p.grad = v
