"""``MultiAdam``: Adam with one (m, v, step) per task over flattened shared parameters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from mtl_fast._core.adam_checks import HYPER_KEYS, check_group, check_hyper
from mtl_fast._core.contracts import AdamHyper, AdamRows, AdamState
from mtl_fast._core.dispatch import resolve, resolve_name
from mtl_fast._core.flat import check_params, flatten_parameters, layout_signature
from mtl_fast._core.precision import accumulation_dtype
from mtl_fast._core.validate import (
    LayoutError,
    NonFiniteError,
    nonfinite_rows,
    require_choice,
    require_float,
    require_positive_int,
    require_weights,
)
from mtl_fast.optim._adam_state import check_state_dict
from mtl_fast.optim.task_gradients import TaskGradients

_ON_NONFINITE = ("raise", "skip", "ignore")


def _one_group(params: object) -> list[torch.Tensor]:
    """The shared parameters as a list; parameter groups (dicts) are refused."""
    if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
        return check_params(params)  # type: ignore[arg-type]  # refuses it, naming it
    plist = list(params)
    if any(isinstance(p, Mapping) for p in plist):
        raise TypeError(
            "MultiAdam takes one parameter group (a list of tensors), not dicts of groups: its "
            "state is one flat buffer with one set of hyperparameters; build one MultiAdam per "
            "group of hyperparameters"
        )
    return check_params(plist)


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

    **One parameter group.** MultiAdam has exactly one group (its state is one flat buffer with
    one set of hyperparameters): dicts of parameter groups and :meth:`add_param_group` are
    refused with a ``ValueError``/``TypeError``; build one MultiAdam per group instead. The
    group's hyperparameters may be changed between steps (an lr scheduler does); each step
    checks them again.

    **No stale copies.** Moving or casting the parameters after construction
    (``model.to(...)``, ``model.double()``, assigning ``p.data``) detaches them from the flat
    buffer; the next :meth:`step` then raises :class:`LayoutError` instead of updating a buffer
    the module no longer reads (checked on the host from each parameter's data pointer, no
    device sync). Build the optimizer after moving the model.

    **Refusals change nothing.** Every argument (gradients, tasks, weights, the arena's
    parameters, the hyperparameters, a loaded state dict) is checked before any state moves; a
    refused call leaves parameters and state bitwise as they were.

    Args:
        params: shared parameters (one floating dtype, one device, P ≥ 1 scalars in all).
        num_tasks: T ≥ 1.
        lr, betas, eps, weight_decay: as torch.optim.AdamW (``weight_decay`` is decoupled; 0
            gives Adam): lr, eps and weight_decay finite and ≥ 0, betas a pair in [0, 1).
            ``lr`` may be a 0-d float tensor on the parameters' device, for CUDA graphs (its
            value is checked here once, and at each step on the CPU).
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
        plist = _one_group(params)
        require_positive_int("num_tasks", num_tasks, 1)
        dev = plist[0].device
        hyper = check_hyper(lr, betas, eps, weight_decay, dev, read_value=True)
        require_choice("on_nonfinite", on_nonfinite, _ON_NONFINITE)
        if sum(p.numel() for p in plist) == 0:
            raise ValueError("params hold no elements (P = 0): there is nothing to optimize")
        resolve_name("multi_adam", backend, dev)  # an unknown or unavailable backend, now
        defaults = {
            "lr": hyper.lr,
            "betas": (hyper.beta1, hyper.beta2),
            "eps": hyper.eps,
            "weight_decay": hyper.weight_decay,
        }
        super().__init__(plist, defaults)
        self.num_tasks = num_tasks
        self.on_nonfinite = on_nonfinite
        self.backend = backend
        self.flat = flatten_parameters(plist)
        P = self.flat.numel()
        # fp32 moments for fp16/bf16 parameters, as fused optimizers do.
        sdtype = accumulation_dtype(self.flat.dtype)
        self.exp_avg = torch.zeros(num_tasks, P, dtype=sdtype, device=dev)
        self.exp_avg_sq = torch.zeros(num_tasks, P, dtype=sdtype, device=dev)
        self.steps = torch.zeros(num_tasks, dtype=torch.float32, device=dev)
        self.last_skipped: list[int] = []
        # What the step checks on the host: the parameters are still the flat buffer's views,
        # and an arena passed in is over these parameters in this order.
        self._params = plist
        self._ptrs = [p.data_ptr() for p in plist]
        self.layout = layout_signature(plist)
        self._checked_hyper: tuple[tuple[Any, ...], AdamHyper] | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Refused after construction: MultiAdam has one parameter group (see the class)."""
        if getattr(self, "param_groups", None):
            raise ValueError(
                "MultiAdam has one parameter group and does not take more (add_param_group): "
                "its state is one flat buffer with one set of hyperparameters; build another "
                "MultiAdam for these parameters"
            )
        super().add_param_group(param_group)

    def _check_layout(self) -> None:
        """Raise :class:`LayoutError` if a parameter is no longer its view of ``self.flat``."""
        if [p.data_ptr() for p in self._params] == self._ptrs:
            return
        for i, (p, ptr) in enumerate(zip(self._params, self._ptrs)):
            if p.data_ptr() != ptr:
                raise LayoutError(
                    f"params[{i}] is no longer a view of the optimizer's flat buffer (now "
                    f"{p.dtype} on {p.device}; the buffer is {self.flat.dtype} on "
                    f"{self.flat.device}): the parameters were moved, cast or reassigned after "
                    "MultiAdam was built (model.to / .double() / p.data = ...); a step would "
                    "update a stale copy. Build the optimizer after moving the model."
                )

    def _check_arena(self, arena: TaskGradients) -> None:
        if arena.layout != self.layout:
            raise LayoutError(
                "grads is a TaskGradients arena over other parameters (or the same ones in "
                "another order) than this optimizer's: its rows would move the wrong "
                "parameters. Build the arena from the optimizer's parameter list."
            )

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
                raise TypeError(
                    "tasks must be a 1-D int32/int64 tensor or a sequence of ints, got a "
                    f"{tasks.dtype} tensor of shape {tuple(tasks.shape)}"
                )
            if tasks.device != dev and tasks.device.type != "cpu":
                raise ValueError(f"tasks is on {tasks.device}, expected {dev} or the CPU")
            if tasks.device.type == "cpu":
                self._check_task_values(tasks.tolist())
            elif tasks.numel() == 0:
                raise ValueError("tasks is empty: a step needs at least one task")
            return tasks.to(device=dev, dtype=torch.int64)
        if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
            raise TypeError(f"tasks must be a sequence of ints, got {type(tasks).__name__}")
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
        if isinstance(grads, TaskGradients):
            self._check_arena(grads)
            G: object = grads.J
        else:
            G = grads
        if not isinstance(G, torch.Tensor):
            raise TypeError(f"grads must be a tensor or TaskGradients, got {type(G).__name__}")
        self._check_layout()
        require_float("grads", G)
        T, P = self.num_tasks, self.flat.numel()
        dev = self.flat.device
        if G.dim() != 2 or G.shape[1] != P:
            raise ValueError(f"grads must have shape (T={T} or |S|, P={P}), got {tuple(G.shape)}")
        if G.device != dev:
            raise ValueError(f"grads is on {G.device} but the parameters are on {dev}")
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
        check = self.on_nonfinite != "ignore"  # that mode never reads back to the host
        if weights is None:
            w = torch.ones(S, dtype=torch.float64, device=dev)
        else:
            w = require_weights("weights", weights, S, dev, check_values=check)
        hyper = self._hyper()
        if check:
            bad_rows = nonfinite_rows(G, grad_rows.tolist())
            if bad_rows:
                ids = task_ids.tolist()
                bad = [int(ids[i]) for i in bad_rows]
                if self.on_nonfinite == "raise":
                    raise NonFiniteError("gradient", bad, "nothing was updated")
                self.last_skipped = bad
                return False
        self.last_skipped = []
        state = AdamState(self.flat, self.exp_avg, self.exp_avg_sq, self.steps)
        fn = resolve("multi_adam", self.backend, dev)
        fn(state, AdamRows(G, grad_rows, task_ids, w), hyper)
        return True

    def _hyper(self) -> AdamHyper:
        """The group's hyperparameters, checked again (a scheduler or the user may have set
        them); a tensor lr's value only where reading it is free (the CPU)."""
        if len(self.param_groups) != 1:
            raise ValueError(
                f"MultiAdam has one parameter group, found {len(self.param_groups)}: "
                "param_groups was changed by hand"
            )
        group = self.param_groups[0]
        key = tuple(group.get(k) for k in HYPER_KEYS)
        lr = key[0]
        cached = self._checked_hyper
        # The same objects as last time need no new check (identity, not equality: True == 1),
        # except a tensor lr on the CPU, whose value may have been changed in place.
        if (
            cached is not None
            and all(a is b for a, b in zip(key, cached[0]))
            and isinstance(key[1], tuple)  # a list could have been changed in place
            and not (isinstance(lr, torch.Tensor) and lr.device.type == "cpu")
        ):
            return cached[1]
        hyper = check_group(group, self.flat.device, read_value=False)
        self._checked_hyper = (key, hyper)
        return hyper

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: hyperparameters and every state tensor."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = group["lr"].clone()
        return {
            "num_tasks": self.num_tasks,
            "num_params": self.flat.numel(),
            "param_group": group,
            "exp_avg": self.exp_avg.clone(),
            "exp_avg_sq": self.exp_avg_sq.clone(),
            "steps": self.steps.clone(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`, strictly and atomically.

        Everything is checked first: exactly the keys of :meth:`state_dict`, T and P equal to
        this optimizer's, each tensor of exactly its shape ((T, P) moments, (T,) steps: nothing
        is broadcast) and dtype, on this device or the CPU, finite (second moments ≥ 0, whole
        step counts ≥ 0), and valid hyperparameters. Only then is anything assigned, so a
        refused dict leaves the optimizer as it was. A tensor lr of this optimizer is updated in
        place (a captured CUDA graph keeps reading it).
        """
        tensors, hyper, group = check_state_dict(
            state_dict,
            num_tasks=self.num_tasks,
            num_params=self.flat.numel(),
            state_dtype=self.exp_avg.dtype,
            device=self.flat.device,
        )
        current = self.param_groups[0]
        lr: float | torch.Tensor = hyper.lr
        if isinstance(current["lr"], torch.Tensor):
            current["lr"].fill_(lr)
            lr = current["lr"]
        elif isinstance(lr, torch.Tensor):
            lr = lr.clone()
        self.exp_avg.copy_(tensors["exp_avg"])
        self.exp_avg_sq.copy_(tensors["exp_avg_sq"])
        self.steps.copy_(tensors["steps"])
        group.update(lr=lr, betas=(hyper.beta1, hyper.beta2), eps=hyper.eps)
        group["weight_decay"] = hyper.weight_decay
        current.update(group)
