"""``MultiAdam``: Adam with one (m, v, step) per task over flattened shared parameters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from mtl_fast._core.contracts import AdamHyper, AdamState
from mtl_fast._core.dispatch import resolve
from mtl_fast._core.flat import check_params, flatten_parameters
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast._core.validate import (
    NonFiniteError,
    nonfinite_rows,
    require_float,
    require_positive_int,
)
from mtl_fast.optim.task_gradients import TaskGradients

_ON_NONFINITE = ("raise", "skip", "ignore")


class MultiAdam(torch.optim.Optimizer):
    """Adam with one state (m_t, v_t, n_t) per task for the shared parameters.

    A step takes the gradients of a task subset S with weights w (docs/math.md):

        n_t += 1;  m_t ← β1 m_t + (1−β1) g_t;  v_t ← β2 v_t + (1−β2) g_t²
        u_t = (m_t / (1−β1^n_t)) / (sqrt(v_t / (1−β2^n_t)) + ε)
        p ← p (1 − lr λ)  [decoupled weight decay, once per step];   p ← p − lr Σ_{t∈S} w_t u_t

    S = {t}, w = 1 is the per-task step of Pascal et al.; S = all, w = 1 keeps separate moments
    and sums the directions. **Tasks outside S are skipped**: their m, v and step count stay
    exactly as they were, as torch.optim.Adam does for a parameter whose grad is None; a task's
    bias correction always uses its own step count. Task heads are not shared: give them an
    ordinary optimizer.

    The parameters become views of one flat (P,) buffer (``self.flat``; values and Parameter
    objects are kept), which is the layout of :class:`TaskGradients` rows.

    Args:
        params: shared parameters (one floating dtype, one device).
        num_tasks: T ≥ 1.
        lr, betas, eps, weight_decay: as torch.optim.AdamW (``weight_decay`` is decoupled; 0
            gives Adam). ``lr`` may be a 0-d tensor on the device, for CUDA graphs.
        on_nonfinite: what a step does when a stepped task's gradient holds NaN/Inf: "raise"
            (:class:`NonFiniteError` naming the tasks, nothing updated), "skip" (nothing updated,
            ``step`` returns False and ``last_skipped`` names the tasks) or "ignore" (no check:
            no host sync, for CUDA graphs).
        backend: "auto", "reference", "triton" or "cuda".

    Example:
        >>> import torch, mtl_fast
        >>> p = torch.nn.Parameter(torch.zeros(4))
        >>> opt = mtl_fast.MultiAdam([p], num_tasks=2, lr=0.1)
        >>> opt.step(torch.ones(2, 4), tasks=[1])      # task 1 only
        True
        >>> opt.state_steps().tolist()
        [0.0, 1.0]
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        num_tasks: int,
        *,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        on_nonfinite: str = "raise",
        backend: str | None = None,
    ) -> None:
        plist = check_params(params)
        require_positive_int("num_tasks", num_tasks, 1)
        if not (isinstance(lr, torch.Tensor) or lr >= 0):
            raise ValueError(f"lr must be ≥ 0, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must each be in [0, 1), got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"eps must be ≥ 0, got {eps!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {weight_decay!r}")
        if on_nonfinite not in _ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {_ON_NONFINITE}, got {on_nonfinite!r}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(plist, defaults)
        self.num_tasks = num_tasks
        self.on_nonfinite = on_nonfinite
        self.backend = backend
        self.flat = flatten_parameters(plist)
        P = self.flat.numel()
        # fp32 moments for fp16/bf16 parameters, as fused optimizers do.
        sdtype = accumulation_dtype(self.flat.dtype)
        dev = self.flat.device
        self.exp_avg = torch.zeros(num_tasks, P, dtype=sdtype, device=dev)
        self.exp_avg_sq = torch.zeros(num_tasks, P, dtype=sdtype, device=dev)
        self.steps = torch.zeros(num_tasks, dtype=torch.float32, device=dev)
        self.last_skipped: list[int] = []

    def state_steps(self) -> torch.Tensor:
        """(T,) the per-task step counts."""
        return self.steps

    def _task_tensor(self, tasks: Sequence[int] | torch.Tensor | None) -> torch.Tensor:
        T = self.num_tasks
        dev = self.flat.device
        if tasks is None:
            return torch.arange(T, device=dev)
        if isinstance(tasks, torch.Tensor):
            if tasks.dtype not in (torch.int32, torch.int64) or tasks.dim() != 1:
                raise ValueError("tasks must be a 1-D integer tensor or a sequence of ints")
            if tasks.device.type == "cpu":
                self._check_task_values(tasks.tolist())
            return tasks.to(device=dev, dtype=torch.int64)
        values = list(tasks)
        self._check_task_values(values)
        return torch.tensor(values, dtype=torch.int64, device=dev)

    def _check_task_values(self, values: list[Any]) -> None:
        if not values:
            raise ValueError("tasks is empty: a step needs at least one task")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < self.num_tasks:
                raise ValueError(f"tasks must be ints in [0, {self.num_tasks}), got {v!r}")
        if len(set(values)) != len(values):
            raise ValueError(f"tasks must be distinct, got {values}")

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        grads: torch.Tensor | TaskGradients,
        tasks: Sequence[int] | torch.Tensor | None = None,
        weights: Sequence[float] | torch.Tensor | None = None,
    ) -> bool:
        """One multi-state Adam step for the tasks S = ``tasks`` (all tasks when None).

        Args:
            grads: a :class:`TaskGradients` arena, a (T, P) tensor whose row t is task t's
                gradient, or a (|S|, P) tensor whose row i belongs to ``tasks[i]``.
            tasks: the task ids in S (distinct).
            weights: (|S|,) weights w_t (default 1).

        Returns:
            True if the step was taken; False if it was skipped (``on_nonfinite="skip"``).
        """
        G = grads.J if isinstance(grads, TaskGradients) else grads
        if not isinstance(G, torch.Tensor):
            raise TypeError(f"grads must be a tensor or TaskGradients, got {type(G).__name__}")
        require_float("grads", G)
        T, P = self.num_tasks, self.flat.numel()
        if G.dim() != 2 or G.shape[1] != P:
            raise ValueError(f"grads must have shape (T={T} or |S|, P={P}), got {tuple(G.shape)}")
        if G.device != self.flat.device:
            raise ValueError(f"grads is on {G.device} but the parameters are on {self.flat.device}")
        task_ids = self._task_tensor(tasks)
        S = task_ids.shape[0]
        if G.shape[0] == T:
            grad_rows = task_ids
        elif G.shape[0] == S:
            grad_rows = torch.arange(S, device=G.device)
        else:
            raise ValueError(
                f"grads has {G.shape[0]} rows; expected T={T} (row t is task t) or "
                f"|S|={S} (row i is tasks[i])"
            )
        if weights is None:
            w = torch.ones(S, dtype=torch.float64, device=G.device)
        else:
            w = torch.as_tensor(weights, device=G.device).to(torch.float64)
            if w.shape != (S,):
                raise ValueError(
                    f"weights must have shape ({S},) (one per task), got {tuple(w.shape)}"
                )
        if self.on_nonfinite != "ignore":
            bad_rows = nonfinite_rows(G, grad_rows.tolist())
            if bad_rows:
                ids = task_ids.tolist()
                bad = [int(ids[i]) for i in bad_rows]
                if self.on_nonfinite == "raise":
                    raise NonFiniteError("gradient", bad, "nothing was updated")
                self.last_skipped = bad
                return False
        self.last_skipped = []
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        hyper = AdamHyper(group["lr"], beta1, beta2, group["eps"], group["weight_decay"])
        state = AdamState(self.flat, self.exp_avg, self.exp_avg_sq, self.steps)
        fn = resolve("multi_adam", self.backend, self.flat.device)
        fn(state, G, grad_rows, task_ids, w, hyper)
        return True

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: hyperparameters and every state tensor."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {
            "num_tasks": self.num_tasks,
            "num_params": self.flat.numel(),
            "param_group": group,
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "steps": self.steps.clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; shapes must match this optimizer's."""
        if state_dict.get("num_tasks") != self.num_tasks:
            raise ValueError(
                f"state_dict is for num_tasks={state_dict.get('num_tasks')}, "
                f"this optimizer has {self.num_tasks}"
            )
        if state_dict.get("num_params") != self.flat.numel():
            raise ValueError(
                f"state_dict is for P={state_dict.get('num_params')} shared scalars, "
                f"this optimizer has {self.flat.numel()}"
            )
        self.exp_avg.copy_(state_dict["exp_avg"])
        self.exp_avg_sq.copy_(state_dict["exp_avg_sq"])
        self.steps.copy_(state_dict["steps"])
        self.param_groups[0].update(state_dict["param_group"])
